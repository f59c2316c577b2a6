"""Where `longctx.fastcpu.attention` rounds bf16 with dropout on: error against SDPA's math path beside speed.

With attention dropout on CPU torch takes SDPA's math path, which computes bf16 inputs in fp32 throughout and
rounds the output once. fastcpu computes scores and softmax in fp32 too; this compares three ways of finishing:

* "scaled output": probabilities rounded to bf16, second matmul in bf16, 1 / (1 - p) applied to the bf16 output
  (fastcpu before 2026-12-07's fourth session): the output is rounded twice.
* "scaled values": 1 / (1 - p) applied to the bf16 values (the math path scales its fp32 values): rounds them again.
* "scaled probabilities": 1 / (1 - p) applied to the fp32 probabilities, rounded once, bf16 second matmul
  (fastcpu now; the rounding SDPA's flash kernel does without dropout).
* "fp32 second matmul": probabilities and values in fp32, output rounded once (what the math path computes).

Each gets the same dropout mask (the same seed before each call; the math path is handed it), on a MiniLM-sized
batch with a third of the rows padded. Prints the mean |error| of the output and of dq, dk, dv against float64,
as a multiple of the math path's own, and the time of one forward + backward (best of --reps, interleaved).

    .venv/bin/python bench/attention_rounding.py [--batch 16 --length 384 --reps 5]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    import torch

    from longctx import fastcpu
    from longctx.common import cpu_name

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--length", type=int, default=384)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--reps", type=int, default=5)
    a = p.parse_args()
    drop = a.dropout
    fastcpu.keep_freed_memory()  # as finetune runs

    def finish(scores: torch.Tensor, v: torch.Tensor, how: str) -> torch.Tensor:
        probs = torch.softmax(scores, dim=-1)
        probs = torch.where(fastcpu.drop_mask(probs.shape, drop, probs.device), 0.0, probs)
        if how == "scaled output":
            return torch.matmul(probs.to(v.dtype), v).mul_(1.0 / (1.0 - drop))
        if how == "scaled values":
            return torch.matmul(probs.to(v.dtype), v * (1.0 / (1.0 - drop)))
        return torch.matmul(probs, v.float()).mul_(1.0 / (1.0 - drop)).to(v.dtype)  # fp32 second matmul

    def alternative(how: str):
        def attend(q, k, v, mask):
            scores = torch.matmul(q.float() * q.shape[-1] ** -0.5, k.float().transpose(-1, -2))
            return finish(scores.masked_fill_(~mask, torch.finfo(torch.float32).min), v, how)
        return attend

    variants = {"scaled output": alternative("scaled output"), "scaled values": alternative("scaled values"),
                "scaled probabilities": lambda q, k, v, mask: fastcpu.attention(q, k, v, mask, dropout_p=drop),
                "fp32 second matmul": alternative("fp32 second matmul")}

    torch.manual_seed(0)
    shape = (a.batch, a.heads, a.length, a.head_dim)
    q0, k0, v0, grad_out = (torch.randn(shape) for _ in range(4))
    mask = torch.ones(a.batch, 1, a.length, a.length, dtype=torch.bool)
    mask[::3, :, :, a.length * 5 // 6:] = False
    torch.manual_seed(1)
    dropped = fastcpu.drop_mask((a.batch, a.heads, a.length, a.length), drop)

    def run(fn, dtype) -> list[torch.Tensor]:
        inputs = [t.to(dtype).requires_grad_() for t in (q0, k0, v0)]
        torch.manual_seed(1)  # every variant draws `dropped` again
        out = fn(*inputs, mask)
        out.backward(grad_out.to(out.dtype))
        return [out.double()] + [t.grad.double() for t in inputs]

    def exact(q, k, v, mask):
        scores = (q @ k.transpose(-1, -2) * a.head_dim ** -0.5).masked_fill(~mask, float("-inf"))
        return (torch.softmax(scores, -1).masked_fill(dropped, 0.0) / (1 - drop)) @ v

    want = run(exact, torch.float64)
    additive = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))  # the bare math op takes no bool mask
    math_path = run(lambda q, k, v, m: torch.ops.aten._scaled_dot_product_attention_math(
        q, k, v, additive.to(q.dtype), drop, False, (~dropped).to(q.dtype))[0], torch.bfloat16)
    base = [(got - w).abs().mean().item() for got, w in zip(math_path, want)]

    inputs = [t.bfloat16().requires_grad_() for t in (q0, k0, v0)]
    times: dict[str, list[float]] = {name: [] for name in variants}
    for rep in range(a.reps + 1):  # the first round warms up
        for name, fn in variants.items():
            start = time.perf_counter()
            fn(*inputs, mask).backward(grad_out.bfloat16())
            if rep:
                times[name].append(time.perf_counter() - start)
    ours = min(times["scaled probabilities"])
    print(f"CPU: {cpu_name()} | torch kernels {torch.backends.cpu.get_cpu_capability()} | {torch.get_num_threads()} "
          f"threads | bf16 attention {list(shape)}, dropout {drop}, one forward + backward")
    print(f"SDPA's math path, mean |error| vs float64: output {base[0]:.2e}, dq {base[1]:.2e}, dk {base[2]:.2e}, "
          f"dv {base[3]:.2e}")
    for name, fn in variants.items():
        errors = [(got - w).abs().mean().item() / b for got, w, b in zip(run(fn, torch.bfloat16), want, base)]
        best = min(times[name])
        print(f"{name:22s} error x math path: output {errors[0]:.2f}, dq {errors[1]:.2f}, dk {errors[2]:.2f}, "
              f"dv {errors[3]:.2f} | {best * 1000:6.0f} ms ({best / ours:.2f}x longctx's)")


if __name__ == "__main__":
    main()
