"""The README's CLI tour runs as written on the tiny world (slow: ~10 minutes on 2 cores).

The tour's bash block is read from README.md and run line by line in a fresh folder, with three
changes only: the packaged config paths (``src/magic_unlearn/configs/...``) point at this
checkout's files, lines that need the Hugging Face hub or a GPU are skipped, and the demo runs
its test-sized ``micro`` preset (the tiny demo would add minutes and checks nothing more here).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def tour_commands(readme: str) -> list[str]:
    """The tour's commands: the first bash block after "## A tour of the CLI", with ``\\``
    continuations joined and comments kept (bash ignores them)."""
    section = readme.split("## A tour of the CLI", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README: no bash block in the tour section"
    return [c.strip() for c in block.group(1).replace("\\\n", " ").splitlines() if c.strip()]


def test_tour_parses_and_names_shipped_files() -> None:
    """Fast guard: every file path the tour names exists in a clone, and no placeholder is
    left for the reader to fill in."""
    cmds = tour_commands((ROOT / "README.md").read_text())
    assert len(cmds) > 10
    for c in cmds:
        for tok in shlex.split(c, comments=True):
            if tok.startswith("src/"):
                assert (ROOT / tok).exists(), f"README tour names a missing file: {tok}"
        assert not re.search(r"<hash>|\[--|\bM\b|traj\.yaml", c), f"placeholder in: {c}"


@pytest.mark.slow
def test_readme_tour_runs_as_written(tmp_path: Path) -> None:
    import torch

    cmds = []
    for c in tour_commands((ROOT / "README.md").read_text()):
        if "EleutherAI/" in c:  # a hub model: needs the network
            continue
        if "--device cuda" in c and not torch.cuda.is_available():
            continue
        if re.match(r"magic-unlearn demo( |$)", c) and "--preset" not in c:
            c += " --preset micro"
        cmds.append(c.replace("src/magic_unlearn/configs/", f"{SRC}/magic_unlearn/configs/"))
    cli = f"{shlex.quote(sys.executable)} -c 'from magic_unlearn.cli import main; main()'"
    script = "\n".join(
        [
            "set -euo pipefail",
            f'magic-unlearn() {{ {cli} "$@"; }}',
            *[f"echo '+ {c.replace(chr(39), '')}' >&2\n{c}" for c in cmds],
        ]
    )
    env = {**os.environ, "PYTHONPATH": str(SRC), "COLUMNS": "120"}
    r = subprocess.run(
        ["bash", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert r.returncode == 0, r.stderr[-6000:]
    for out in ("runs/scores", "runs/analysis/report.md", "runs/lds/lds.md", "runs/rr-magic"):
        assert (tmp_path / out).exists(), out
    assert (tmp_path / "runs/rr-tamper/verdict.json").exists()
    assert (tmp_path / "runs/demo/report.html").exists()
    assert (tmp_path / "runs/sweep/report.md").exists()
    assert "Traceback" not in r.stderr
