"""Training fast on a CPU: two things torch leaves slow there, fixed without changing what is computed.

**Dropout.** On CPU, torch's dropout (`bernoulli_`) draws one Mersenne-Twister number per element, on one
thread, then builds a float noise tensor; in a MiniLM training step (batch 16 x 256, fp32, 2 cores) that was 20%
of the step. Worse, PyTorch's fused (flash) attention kernel has no dropout on CPU, so a model with attention
dropout (every BERT-family config: 0.1) takes SDPA's unfused math path, with a float noise tensor the size of the
attention matrix kept for the backward pass. Here:

* `drop_mask` draws one 64-bit number per *four* elements (`torch.randint` on the default generator, so
  `torch.manual_seed`, the Trainer's seed and activation checkpointing's RNG replay all apply) and compares 16-bit
  lanes with a threshold: each element is dropped independently with probability `round(p * 65536) / 65536`
  (p = 0.1 -> 0.100006). The mask is a bool tensor (1 byte per element, not 4).
* `dropout` is `F.dropout` with that mask on CPU (the same 1 / (1 - p) scaling; the backward reuses the mask).
* `attention` is `F.scaled_dot_product_attention` (bool or additive mask, not causal) with the dropout done the
  same way when it is on; without dropout, or off the CPU, it *is* SDPA (fused kernels).

The result has the same distribution as torch's dropout, not the same random numbers: a seeded run repeats
itself, but is not bit-equal to one made with `nn.Dropout`. On CUDA nothing changes (torch's dropout and fused
attention with dropout are fast there).

**Freed memory.** glibc hands every block over 32 MB (the cap of its adaptive threshold) straight back to the
kernel when freed, so each training step page-faults its attention-sized temporaries in afresh: copying a
38 MB tensor took 12.5 ms that way and 1.3 ms from reused memory (2-vCPU EPYC). `keep_freed_memory` raises
glibc's mmap and trim thresholds to 1 GiB (mallopt), so freed blocks are reused; the process's memory then
stays at its high-water mark instead of shrinking between steps. It does nothing off glibc, or when the user set
glibc's own variables (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`, `GLIBC_TUNABLES`): those win.

`enable(model)` applies all of this to a loaded transformers model, in place: every `nn.Dropout` becomes
`FastDropout` (a subclass: same `p`, state dict and repr), and a model on transformers' `"sdpa"` attention gets
`ATTENTION_NAME`, registered with transformers' attention and mask interfaces (with `"sdpa"`'s masks). That
choice is not written to config.json (transformers keeps it out), so a saved model stays plain. Longformer's
chunked attention (`longctx.attention`) calls `attention` itself. Measured gains: bench/RESULTS.md.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["ATTENTION_NAME", "FastDropout", "attention", "drop_mask", "dropout", "enable", "hf_attention",
           "keep_freed_memory"]

ATTENTION_NAME = "longctx_sdpa"


def drop_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """Bool tensor of `shape`: True where an element is dropped, independently with probability ~`p`.

    Four 16-bit lanes of one 64-bit draw per four elements (see the module docstring for why and the rounding)."""
    n = 1
    for size in shape:
        n *= size
    # the whole int64 range, so every 16-bit lane is uniform (random_() alone leaves the top bit 0)
    bits = torch.randint(-2**63, 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=device)
    lanes = bits.view(torch.int16)[:n]
    return (lanes < round(p * 65536) - 32768).view(shape)


class _MaskedDropout(torch.autograd.Function):
    """x * keep / (1 - p), keeping only the bool mask for the backward pass (one pass each way)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, p: float) -> torch.Tensor:
        dropped = drop_mask(x.shape, p, x.device)
        ctx.save_for_backward(dropped)
        ctx.scale = 1.0 / (1.0 - p)
        return torch.where(dropped, 0.0, x * ctx.scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (dropped,) = ctx.saved_tensors
        return torch.where(dropped, 0.0, grad * ctx.scale), None


def _fast(x: torch.Tensor, p: float, training: bool) -> bool:
    return training and 0.0 < p < 1.0 and x.device.type == "cpu"


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """`F.dropout(x, p, training)`, with the cheap mask on CPU."""
    if not _fast(x, p, training):
        return F.dropout(x, p, training)
    return _MaskedDropout.apply(x, p)


class FastDropout(torch.nn.Dropout):
    """`nn.Dropout` computed by `dropout` (same parameters; `enable` switches existing modules' class)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace:  # in-place dropout is torch's own semantics; keep torch's kernel for it
            return super().forward(x)
        return dropout(x, self.p, self.training)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
              dropout_p: float = 0.0, scale: float | None = None) -> torch.Tensor:
    """`F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)` (not causal).

    With dropout on a CPU tensor, the probabilities are computed explicitly (as SDPA's math path does) and
    dropped with `drop_mask`, then scaled by 1 / (1 - p). `mask`: bool (True = attend) or additive float,
    broadcastable to [.., L_q, L_k].

    For bf16/fp16 inputs the scores and softmax are computed in fp32, as SDPA's CPU kernels do, and the scaled
    probabilities are rounded once to the values' dtype for the second matmul, as SDPA's flash kernel (torch's
    choice without dropout) does. bf16 scores doubled the output's error against fp32 and cost learning (the
    demo's F1 79 / 15 against 100 / 35 at seeds 0 / 1); scaling the rounded output instead of the probabilities
    added 15-25% to the error of the output and gradients against SDPA's math path (torch's choice with dropout);
    an fp32 second matmul, as that path does, matches it at 3% more time per call; not yet measured on the whole
    job (bench/attention_rounding.py, bench/RESULTS.md). Under autocast the inputs are first cast as autocast
    casts SDPA's.
    """
    if not _fast(q, dropout_p, True):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
    if torch.is_autocast_enabled("cpu"):  # SDPA is on CPU autocast's lower-precision list
        low = torch.get_autocast_dtype("cpu")
        q, k, v = q.to(low), k.to(low), v.to(low)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    with torch.autocast("cpu", enabled=False):  # the fp32 scores below must not be cast back down
        acc = torch.float32 if q.dtype in (torch.bfloat16, torch.float16) else q.dtype
        scores = torch.matmul(q.to(acc) * scale, k.to(acc).transpose(-1, -2))  # scaled on the [.., L, d] side
        if mask is not None:
            if mask.dtype == torch.bool:
                scores = scores.masked_fill_(~mask, torch.finfo(acc).min)
            else:
                scores = scores.add_(mask)
        probs = torch.softmax(scores, dim=-1)
        probs = torch.where(drop_mask(probs.shape, dropout_p, probs.device), 0.0, probs)
        if v.dtype == acc:  # fp32: scale the [.., L, d] output (d / L_k of the probabilities' elements)
            return torch.matmul(probs, v).mul_(1.0 / (1.0 - dropout_p))
        # bf16/fp16: scale before the probabilities are rounded, so the output is rounded once, not twice
        return torch.matmul(probs.mul_(1.0 / (1.0 - dropout_p)).to(v.dtype), v)


def hf_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                 is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' `"sdpa"` attention function, with `attention`'s dropout for encoder self-attention.

    Anything else (no dropout, causal or cached attention, grouped heads, position bias, another device) is
    handed to transformers' own `sdpa_attention_forward` unchanged."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    causal = is_causal if is_causal is not None else getattr(module, "is_causal", False)
    plain = (not causal and query.shape[1] == key.shape[1] and kwargs.get("position_bias") is None
             and kwargs.get("cache") is None and not kwargs.get("output_attentions", False))
    if not (plain and _fast(query, dropout, True)):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    out = attention(query, key, value, attention_mask, dropout_p=dropout, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    """Make `ATTENTION_NAME` known to transformers: this attention, with the masks `"sdpa"` gets."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION_NAME, hf_attention)  # a dict update: registering twice is harmless
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


GLIBC_MALLOC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc keep freed blocks up to 1 GiB for reuse (see the module docstring); True if it was set here."""
    if any(v in os.environ for v in GLIBC_MALLOC_VARIABLES):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl): their allocators differ, nothing measured there
        return False
    mmap_threshold, trim_threshold = -3, -1  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD in glibc's malloc.h
    return bool(mallopt(mmap_threshold, 2**30)) and bool(mallopt(trim_threshold, 2**30))


def enable(model: torch.nn.Module) -> torch.nn.Module:
    """Switch `model`'s dropout (and, where it uses `"sdpa"`, its attention dropout) to this module's, in place,
    and keep freed memory for reuse (`keep_freed_memory`, process-wide).

    Parameters, state dict and saved config are unchanged; evaluation (`model.eval()`) computes as before."""
    keep_freed_memory()
    for module in model.modules():
        if type(module) is torch.nn.Dropout:  # exact type: leave other subclasses alone
            module.__class__ = FastDropout
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "_attn_implementation", None) == "sdpa":
        _register()
        for sub in model.modules():  # every (sub)model's config that says "sdpa": the encoder's is shared
            sub_config = getattr(sub, "config", None)
            if sub_config is not None and getattr(sub_config, "_attn_implementation", None) == "sdpa":
                sub_config._attn_implementation = ATTENTION_NAME
    return model
