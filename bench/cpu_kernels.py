"""One MiniLM QA training step with torch's CPU kernels vs longctx.fastcpu's, each in a fresh process.

longctx.fastcpu changes two things (its docstring says why): dropout masks drawn four elements per random number
(which also replaces SDPA's unfused math path when attention dropout is on), and glibc told to keep freed memory
for reuse. This times forward + backward + one AdamW step of the real MiniLM-L6 QA model (the model's attention
dropout, 0.1; a third of the batch padded) for: torch's kernels (as the reference pipeline loads the model),
each change alone, and both (as finetune loads it), in fp32 and, where the CPU computes it natively, bf16
autocast; and prints the ratios. The whole-job effect, F1 beside speed, is bench/finetune.py's.

    .venv/bin/python bench/cpu_kernels.py [--batch 16 --lengths 224 384 --steps 3]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from minilm_step import step_seconds  # bench/ is this script's folder, first on sys.path

# name -> (longctx's dropout kernels, keep freed memory). Setting one of glibc's own malloc variables (here its
# default trim threshold) is how a user keeps glibc's behaviour: fastcpu.keep_freed_memory then does nothing.
VARIANTS = {"torch": (False, False), "dropout kernels": (True, False), "keep freed memory": (False, True),
            "both (finetune's)": (True, True)}
GLIBC_DEFAULT = {"MALLOC_TRIM_THRESHOLD_": str(128 * 1024)}


def child(spec: dict) -> None:
    if spec.pop("keep"):
        from longctx.fastcpu import keep_freed_memory

        assert keep_freed_memory(), "glibc's mallopt refused"
    print(json.dumps(step_seconds(**spec)))


def fresh(spec: dict, keep: bool) -> float:
    env = dict(os.environ)
    if not keep:
        env.update(GLIBC_DEFAULT)
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps({**spec, "keep": keep})], env=env,
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    import torch

    from longctx.common import cpu_name
    from longctx.precision import cpu_bf16

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lengths", type=int, nargs="+", default=[224, 384])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return child(json.loads(a.child))
    native, why = cpu_bf16()
    print(f"CPU: {cpu_name()} | torch kernels {torch.backends.cpu.get_cpu_capability()} | {torch.get_num_threads()} "
          f"threads | {why}")
    for precision in ["fp32"] + (["bf16"] if native else []):
        for length in a.lengths:
            spec = {"batch": a.batch, "length": length, "steps": a.steps, "precision": precision, "padded": True}
            times = {name: fresh({**spec, "fast": fast}, keep) for name, (fast, keep) in VARIANTS.items()}
            base = times["torch"]
            print(f"{precision} batch {a.batch} x {length}: " + ", ".join(
                f"{name} {s:.2f} s/step ({base / s:.2f}x)" for name, s in times.items()), flush=True)


if __name__ == "__main__":
    main()
