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
import contextlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def step_seconds(attention_dropout: float | None, precision: str, batch: int, length: int, steps: int) -> float:
    import torch

    from longctx.models import BUNDLED_MINILM, load_qa_model

    torch.manual_seed(0)
    _, model = load_qa_model(BUNDLED_MINILM, attention_dropout=attention_dropout)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ids = torch.randint(1000, 20000, (batch, length))
    mask = torch.ones_like(ids)
    mask[::3, length * 5 // 6:] = 0  # a third of the windows padded, as in a length bucket
    zeros = torch.zeros(batch, dtype=torch.long)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext

    def step() -> None:
        with autocast():
            out = model(input_ids=ids, attention_mask=mask, start_positions=zeros, end_positions=zeros)
        out.loss.backward()
        opt.step()
        opt.zero_grad()

    step()  # warm-up: allocations, kernel choice
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


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
            own = step_seconds(None, precision, a.batch, length, a.steps)
            none = step_seconds(0.0, precision, a.batch, length, a.steps)
            print(f"{precision} batch {a.batch} x {length}: attention dropout 0.1 {own:.2f} s/step, 0 {none:.2f} "
                  f"s/step: {own / none:.2f}x", flush=True)


if __name__ == "__main__":
    main()
