"""`longctx demo` with longctx.fastcpu's kernels vs torch's own dropout and SDPA, over several seeds, same run.

fastcpu's dropout has torch's distribution but other random numbers, so a single demo run cannot tell a kernel
that learns less from a different draw: the demo's task is learnt suddenly, once the relation is found, and its
F1 swings between seeds. Each (variant, seed) is a fresh process running the demo's own code; "torch" undoes
`longctx.fastcpu` there (no module switch, `F.scaled_dot_product_attention` in the Longformer chunks), which is
the code path before fastcpu existed. Prints held-out F1 and wall time per run, and the mean per variant.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/demo_kernels.py --seeds 0 1 2 3 [--out /tmp/demo-kernels]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

_CHILD = """
import sys
import torch.nn.functional as F
import longctx.attention
import longctx.fastcpu
if sys.argv[1] == "torch":
    longctx.fastcpu.enable = lambda model: model
    longctx.attention.attention = lambda q, k, v, mask=None, dropout_p=0.0, scale=None: \\
        F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
from longctx.cli import main
sys.exit(main(["demo", "--out", sys.argv[2], "--seed", sys.argv[3]] + sys.argv[4:]))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--variants", nargs="+", default=["longctx", "torch"], choices=["longctx", "torch"])
    p.add_argument("--out", default="/tmp/demo-kernels", help="folder for the runs (one subfolder per run)")
    p.add_argument("--precision", default="auto")
    a = p.parse_args()
    runs = [(seed, variant, Path(a.out) / f"{variant}-seed{seed}") for seed in a.seeds for variant in a.variants]
    taken = [str(out) for _, _, out in runs if out.exists()]
    if taken:  # checked for every run before any starts: runs are not overwritten
        print(f"{taken[0]} exists: pick another --out", file=sys.stderr)
        sys.exit(2)
    scores: dict[str, list[float]] = {v: [] for v in a.variants}
    for seed, variant, out in runs:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", _CHILD, variant, str(out), str(seed), "--precision", a.precision],
                       check=True, capture_output=True)
        wall = time.perf_counter() - start
        f1 = json.loads((out / "finetune" / "metrics.json").read_text())["eval"]["f1"]
        scores[variant].append(f1)
        print(f"seed {seed} {variant:8s} F1 {f1:6.1f}  wall {wall:5.0f} s", flush=True)
    for variant, f1s in scores.items():
        spread = f" ± {statistics.stdev(f1s):.1f}" if len(f1s) > 1 else ""
        print(f"{variant:8s} mean F1 {statistics.mean(f1s):.1f}{spread} over seeds {a.seeds}: {[round(f, 1) for f in f1s]}")


if __name__ == "__main__":
    main()
