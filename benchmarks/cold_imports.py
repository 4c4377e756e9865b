"""Issue 15: what a fresh process pays before MAGIC's first double backward runs.

Times, each in a fresh interpreter (one GPU): the imports (torch, transformers, magic_unlearn,
dynamo, inductor, triton), CUDA's first context, and the first ``torch.compile`` call of a
trivial function with an empty and with a warm inductor cache, then a second function in the
same process (what each further node pays). Prints a table; ``--out`` writes the JSON.

    PYTHONPATH=src python benchmarks/cold_imports.py --out cold_imports.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import json, time
t = {}
t0 = time.perf_counter()
import torch
t["import torch"] = time.perf_counter() - t0
a = time.perf_counter(); torch.zeros(1, device="cuda"); torch.cuda.synchronize()
t["cuda context"] = time.perf_counter() - a
for mod in ("transformers", "magic_unlearn.attribution", "torch._dynamo", "torch._inductor.compile_fx", "triton"):
    a = time.perf_counter(); __import__(mod); t["import " + mod] = time.perf_counter() - a
x = torch.randn(4096, 1024, device="cuda")
def f(x):
    return torch.nn.functional.gelu(x * 2 + 1).sum(dim=1)
def g(x):
    return (x.tanh() * x).mean(dim=0)
for name, fn in (("first compile call", f), ("second function", g)):
    a = time.perf_counter(); torch.compile(fn, dynamic=False)(x); torch.cuda.synchronize()
    t[name] = time.perf_counter() - a
print("CHILD " + json.dumps(t), flush=True)
"""


def child(cache: str) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("CHILD ")]
    if p.returncode or not lines:
        raise RuntimeError(p.stderr[-3000:])
    row = json.loads(lines[-1][6:])
    row["process wall"] = wall
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    cache = tempfile.mkdtemp(prefix="inductor-")
    rows = {"empty cache": child(cache), "warm cache": child(cache), "warm again": child(cache)}
    keys = list(rows["empty cache"])
    print("| seconds | " + " | ".join(rows) + " |")
    print("|---|" + "---|" * len(rows))
    for k in keys:
        print(f"| {k} | " + " | ".join(f"{r[k]:.2f}" for r in rows.values()) + " |")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
