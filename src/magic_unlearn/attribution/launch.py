"""Multi-process attribution from a single process: ``torchrun`` over an :class:`AttributionJob`.

The pipeline's attribute stage (``params.attribute.nproc_per_node`` > 1, e.g. inside a Slurm job
that ``sweep --executor slurm`` submitted with ``gpus_per_node``) writes the job to a JSON file
and starts ``torchrun --standalone --nproc-per-node N -m magic_unlearn.attribution.launch JOB``;
every process runs :func:`~magic_unlearn.attribution.run_attribution` on it, MAGIC is sharded
over them (``sharded.py``) and rank 0 writes the artifact. ``docs/scale.md`` shows the cluster
set-up.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

from magic_unlearn.attribution.artifact import ScoreArtifact
from magic_unlearn.attribution.run import AttributionJob, run_attribution
from magic_unlearn.config import from_dict, to_dict
from magic_unlearn.distributed import torchrun_command
from magic_unlearn.io import atomic_write_json

logger = logging.getLogger(__name__)


def launch_attribution(job: AttributionJob, nproc_per_node: int, folder: Path) -> ScoreArtifact:
    """Run ``job`` in ``nproc_per_node`` processes on this node; returns its artifact.

    Args:
        job: the attribution job (``job.out`` must be set: rank 0 writes the artifact there).
        nproc_per_node: processes (one per GPU).
        folder: where the job file and the processes' log (``attribute_torchrun.log``) go.

    Raises:
        ValueError: ``job.out`` is not set; RuntimeError: a process failed (the log's tail).
    """
    if job.out is None:
        raise ValueError("a multi-process attribution job needs job.out (rank 0 writes it)")
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / "attribute_job.json"
    atomic_write_json(spec, to_dict(job))
    log_path = folder / "attribute_torchrun.log"
    cmd = torchrun_command(nproc_per_node, "magic_unlearn.attribution.launch", [str(spec)])
    logger.info("attribution on %d processes: %s", nproc_per_node, " ".join(cmd))
    with open(log_path, "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    if rc != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
        raise RuntimeError(
            f"torchrun attribution failed (exit code {rc}); full log in {log_path}:\n{tail}"
        )
    return ScoreArtifact.load(job.out)


def main(argv: list[str] | None = None) -> None:
    """Entry point of each torchrun process: ``python -m magic_unlearn.attribution.launch JOB``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m magic_unlearn.attribution.launch JOB.json")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    data = json.loads(Path(args[0]).read_text())
    run_attribution(from_dict(AttributionJob, data, source=args[0]))


if __name__ == "__main__":
    main()
