"""One MiniLM QA training step with the model's attention dropout (0.1) vs none, in the same run.

PyTorch's fused (flash) attention kernel has no dropout on CPU: with BERT-family configs' 0.1 every training
step takes the unfused path (attention probabilities materialised, softmax, a dropout mask per layer). This
times forward + backward + one AdamW step of the real MiniLM-L6 QA model on a padded batch, for each setting,
in fp32 and (where the CPU computes it natively) bf16 autocast, and prints the ratio. The whole-job effect
(F1 beside speed) is bench/finetune.py's `--variants '{"name":"attn-dropout-0.1","attention_dropout":0.1}'`.

    .venv/bin/python bench/attention_dropout.py [--batch 16 --lengths 224 384 --steps 3]
"""
from __future__ import annotations

import argparse

from minilm_step import step_seconds  # bench/ is this script's folder, first on sys.path


def main() -> None:
    import torch

    from longctx.common import cpu_name
    from longctx.precision import cpu_bf16

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lengths", type=int, nargs="+", default=[224, 384])
    p.add_argument("--steps", type=int, default=3)
    a = p.parse_args()
    native, why = cpu_bf16()
    print(f"CPU: {cpu_name()} | torch kernels {torch.backends.cpu.get_cpu_capability()} | {torch.get_num_threads()} "
          f"threads | {why}")
    for precision in ["fp32"] + (["bf16"] if native else []):
        for length in a.lengths:
            own = step_seconds(a.batch, length, a.steps, precision=precision, padded=True)
            none = step_seconds(a.batch, length, a.steps, attention_dropout=0.0, precision=precision, padded=True)
            print(f"{precision} batch {a.batch} x {length}: attention dropout 0.1 {own:.2f} s/step, 0 {none:.2f} "
                  f"s/step: {own / none:.2f}x", flush=True)


if __name__ == "__main__":
    main()
