"""Threads on a small CPU: one training process with all cores as intra-op threads vs one single-thread
process per core, on the same MiniLM training step, in the same run.

On 2 cores torch's intra-op threads leave a core partly idle (a MiniLM fp32 step reaches ~165% of 200% CPU):
two single-thread processes together do more steps per second. That is how to run several independent jobs
(two sweeps on the same runs folder with OMP_NUM_THREADS=1: the sweep's cell locks share the work); one job
still gets all cores. Prints s/step of each layout, the steps/s of the machine and the ratio.

    .venv/bin/python bench/threads.py [--batch 16 --length 224 --steps 4]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from minilm_step import step_seconds  # bench/ is this script's folder, first on sys.path


def child(batch: int, length: int, steps: int) -> None:
    import torch

    seconds = step_seconds(batch, length, steps)  # the model's own attention dropout, no padding
    print("RESULT " + json.dumps({"threads": torch.get_num_threads(), "s_per_step": seconds}), flush=True)


def launch(n: int, threads: int, args: argparse.Namespace) -> list[dict]:
    """n processes at once, each with `threads` intra-op threads; their results."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, __file__, "--child", "--batch", str(args.batch), "--length", str(args.length),
           "--steps", str(args.steps)]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for _ in range(n)]
    results = []
    for p in procs:
        out, _ = p.communicate()
        lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
        if p.returncode or not lines:
            raise SystemExit(f"bench/threads.py: a child failed (exit {p.returncode})")
        results.append(json.loads(lines[-1][7:]))
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=224, help="tokens per window (224: SQuAD's mean with padding per batch)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a.batch, a.length, a.steps)
        return
    import torch

    from longctx.common import cpu_name

    cores = os.cpu_count() or 1
    print(f"CPU: {cpu_name()} | torch kernels {torch.backends.cpu.get_cpu_capability()} | {cores} cores | "
          f"MiniLM training step, batch {a.batch} x {a.length} tokens, fp32", flush=True)
    one = launch(1, cores, a)[0]
    many = launch(cores, 1, a)
    rate_one = 1 / one["s_per_step"]
    rate_many = sum(1 / r["s_per_step"] for r in many)
    print(f"1 process x {cores} threads: {one['s_per_step']:.2f} s/step -> {rate_one:.3f} steps/s")
    print(f"{cores} processes x 1 thread: " + ", ".join(f"{r['s_per_step']:.2f}" for r in many)
          + f" s/step -> {rate_many:.3f} steps/s")
    print(f"ratio: {rate_many / rate_one:.2f}x the steps per second with one single-thread process per core")


if __name__ == "__main__":
    main()
