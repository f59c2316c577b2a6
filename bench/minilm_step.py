"""One timed MiniLM QA training step (forward, backward, one AdamW step), shared by bench/threads.py and
bench/attention_dropout.py so both time the same work."""
from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def step_seconds(batch: int, length: int, steps: int, *, attention_dropout: float | None = None,
                 precision: str = "fp32", padded: bool = False, fast: bool = True) -> float:
    """Mean seconds per step of the real MiniLM-L6 QA model on random ids, after one warm-up step.

    attention_dropout: None keeps the model's own (0.1). precision: fp32, or bf16 (CPU autocast).
    padded: pad a third of the windows by a sixth of `length`, as in a length bucket.
    fast: the model as finetune loads it (longctx.fastcpu's dropout kernels and allocator setting); False: as
    transformers computes it (the reference pipeline's load)."""
    import torch

    from longctx.models import BUNDLED_MINILM, load_qa_model

    torch.manual_seed(0)
    _, model = load_qa_model(BUNDLED_MINILM, attention_dropout=attention_dropout, fast_attention=fast)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ids = torch.randint(1000, 20000, (batch, length))
    mask = torch.ones_like(ids)
    if padded:
        mask[::3, length * 5 // 6:] = 0
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
