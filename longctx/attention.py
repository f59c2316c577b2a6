"""Fast Longformer attention: the same sliding-window + global attention, computed with torch SDPA over chunks.

HF's `LongformerSelfAttention` builds its banded scores with strided copies, einsums and diagonal
re-packing; on CPU that is slower than plain full attention below ~2k tokens and costs ~1.5 GB per
768-wide layer at 4096 tokens (issue #9). `LongformerSDPAAttention` computes exactly the same function
(same weights, same masks, same outputs and gradients to float rounding) with
`torch.nn.functional.scaled_dot_product_attention`, which dispatches to fused kernels (flash/efficient
attention on CUDA, the flash kernel on CPU) and never materialises the probabilities (with attention dropout on
CPU, where the flash kernel has none, `longctx.fastcpu.attention` computes them with a cheap dropout mask):

* **Local rows.** The (padded) sequence is cut into blocks of `w` tokens (`w` = one-sided window =
  `attention_window[layer] // 2`). Block `i`'s queries attend to the keys of blocks `i-1, i, i+1` (`3w`
  keys) under a band mask `|q - k| <= w`, plus the local-projection keys/values of the sequence's global
  tokens appended as extra keys. Keys that are padding, or global (they are already among the extra
  keys), are masked out of the window, exactly as HF does. Padding query rows output 0.
* **Global rows.** Tokens with global attention get their output from `query_global` over all
  non-padding tokens' `key_global`/`value_global`, one dense SDPA call with `n_global` queries.

The module *is* a `LongformerSelfAttention` (a subclass with the same parameters: query, key, value,
query_global, key_global, value_global), so `enable(model)` only switches the class of each existing
attention module in place: parameters (and an optimizer's references to them), devices, dtypes and
hooks are untouched, `state_dict()` is unchanged and a saved model is a plain HF Longformer checkpoint.

Hand-written rather than a library call because transformers has no SDPA path for Longformer
(`_supports_sdpa` is absent for it) and no library provides Longformer's local+global pattern.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers.models.longformer.modeling_longformer import LongformerSelfAttention

from longctx.common import LongctxError, log
from longctx.fastcpu import attention  # SDPA; with dropout on CPU, a cheaper mask than SDPA's math path

__all__ = ["LongformerSDPAAttention", "enable", "disable", "enabled_layers", "sliding_window_attention",
           "global_attention"]


def sliding_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    num_heads: int,
    window: int,
    key_in_window: torch.Tensor,
    query_masked: torch.Tensor,
    global_k: torch.Tensor | None = None,
    global_v: torch.Tensor | None = None,
    global_ok: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    block: int | None = None,
) -> torch.Tensor:
    """Sliding-window attention (one-sided window `window`) plus extra keys seen by every query.

    Args:
        q, k, v: projected queries/keys/values, [batch, seq, hidden] (not yet scaled).
        num_heads: attention heads; head_dim = hidden // num_heads.
        window: one-sided window w: query i sees keys j with |i - j| <= w.
        key_in_window: [batch, seq] bool, keys that may be attended through the window
            (Longformer: not padding and not global).
        query_masked: [batch, seq] bool, query rows whose output is set to 0 (padding).
        global_k, global_v: [batch, n_global, hidden] extra keys/values every query attends to, or None.
        global_ok: [batch, n_global] bool, which of the extra keys are real (rows are padded to the batch max).
        dropout_p: dropout on the attention probabilities.
        block: queries per chunk (default: `window`); each chunk sees `block + 2 * window` keys.

    Returns:
        [batch, seq, hidden] attention output; rows in `query_masked` are 0.
    """
    B, L, E = q.shape
    H, d, w = num_heads, E // num_heads, window
    b = block or w
    if L <= b + 2 * w:  # one chunk holding every key costs no more than chunking: plain masked attention
        b, left, nb = L, 0, 1
    else:
        left, nb = w, -(-L // b)
    pad = nb * b - L  # queries are padded to nb chunks of b
    span = b + 2 * left  # keys seen by one chunk: [start - left, start + b + left)
    G = 0 if global_k is None else global_k.shape[1]

    # Queries: [B, L, E] -> [B*nb, H, b, d]
    qb = F.pad(q, (0, 0, 0, pad)).view(B, nb, b, H, d).transpose(2, 3).reshape(B * nb, H, b, d)

    # Keys/values: overlapping spans (a strided view of the padded sequence, copied once by reshape/cat).
    def spans(x: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor:
        x = F.pad(x, (0, 0, left, left + pad)).unfold(1, span, b)  # [B, nb, E, span]
        x = x.unflatten(2, (H, d)).transpose(-1, -2)  # [B, nb, H, span, d]
        if extra is not None:
            extra = extra.view(B, 1, G, H, d).transpose(2, 3).expand(B, nb, H, G, d)
            x = torch.cat([x, extra], dim=3)
        return x.reshape(B * nb, H, span + G, d)

    kb = spans(k, global_k)
    vb = spans(v, global_v)

    # Mask [B*nb, 1, b, span + G]: band |q - k| <= w & key allowed through the window, then the real
    # global keys. Query r of a chunk is at start + r, key c of its span at start - left + c.
    rel = torch.arange(b, device=q.device)[:, None] + left - torch.arange(span, device=q.device)[None, :]
    band = rel.abs() <= w
    kwin = F.pad(key_in_window, (left, left + pad), value=False).unfold(1, span, b)  # [B, nb, span]
    mask = band & kwin[:, :, None, :]
    if G:
        mask = torch.cat([mask, global_ok[:, None, None, :].expand(B, nb, b, G)], dim=-1)
    # Padding queries may have no allowed key at all (softmax of nothing = NaN, even in the backward pass):
    # let them see their own key; their output is zeroed below, as HF zeroes their probabilities.
    qmask = F.pad(query_masked, (0, pad), value=True).view(B, nb, b, 1)
    own = F.pad(rel == 0, (0, G), value=False)
    mask = (mask | (qmask & own)).view(B * nb, 1, b, span + G)

    out = attention(qb, kb, vb, mask, dropout_p=dropout_p)
    out = out.view(B, nb, H, b, d).transpose(2, 3).reshape(B, nb * b, E)[:, :L]
    return out.masked_fill(query_masked[:, :, None], 0.0)


def global_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, key_ok: torch.Tensor,
    query_ok: torch.Tensor | None = None, dropout_p: float = 0.0,
) -> torch.Tensor:
    """Dense attention of a few queries [B, G, E] over all keys [B, L, E] -> [B, G, E].

    `key_ok` [B, L] marks the keys that may be attended; `query_ok` [B, G] the real queries (the others are
    batch padding: they attend to every key, which keeps them finite, and are to be discarded)."""
    B, G, E = q.shape
    L = k.shape[1]
    H, d = num_heads, E // num_heads
    mask = key_ok[:, None, None, :]
    if query_ok is not None:
        mask = mask | ~query_ok[:, None, :, None]
    out = attention(
        q.view(B, G, H, d).transpose(1, 2), k.view(B, L, H, d).transpose(1, 2), v.view(B, L, H, d).transpose(1, 2),
        mask, dropout_p=dropout_p)
    return out.transpose(1, 2).reshape(B, G, E)


class LongformerSDPAAttention(LongformerSelfAttention):
    """Drop-in `LongformerSelfAttention` computed with chunked SDPA (see the module docstring).

    Same constructor, parameters and call signature as the HF module. `output_attentions=True` needs the
    attention probabilities, which SDPA never builds: such calls run HF's implementation (same weights).
    The sequence length need not be a multiple of the window.
    """

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        is_index_masked: torch.Tensor | None = None,
        is_index_global_attn: torch.Tensor | None = None,
        is_global_attn: bool | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        if output_attentions:  # probabilities requested: HF's path computes them
            return super().forward(hidden_states, attention_mask=attention_mask, is_index_masked=is_index_masked,
                                   is_index_global_attn=is_index_global_attn, is_global_attn=is_global_attn,
                                   output_attentions=True)
        B, L, _ = hidden_states.shape
        # LongformerModel passes attention_mask as: < 0 padding, 0 local, > 0 global (and the derived masks).
        if is_index_masked is None:
            is_index_masked = (attention_mask < 0) if attention_mask is not None else \
                torch.zeros(B, L, dtype=torch.bool, device=hidden_states.device)
        if is_index_global_attn is None:
            is_index_global_attn = (attention_mask > 0) if attention_mask is not None else \
                torch.zeros(B, L, dtype=torch.bool, device=hidden_states.device)
        if is_global_attn is None:
            is_global_attn = bool(is_index_global_attn.any())
        p = self.dropout if self.training else 0.0

        q = self.query(hidden_states)
        k = self.key(hidden_states)
        v = self.value(hidden_states)
        key_in_window = ~(is_index_masked | is_index_global_attn)

        if not is_global_attn:
            out = sliding_window_attention(q, k, v, self.num_heads, self.one_sided_attn_window_size,
                                           key_in_window, is_index_masked, dropout_p=p)
            return (out,)

        # Global tokens of each sequence, in order, padded to the batch's largest count (as HF does).
        counts = is_index_global_attn.sum(dim=1)
        G = int(counts.max())
        order = torch.argsort((~is_index_global_attn).to(torch.int8), dim=1, stable=True)[:, :G]  # [B, G]
        global_ok = torch.arange(G, device=counts.device)[None, :] < counts[:, None]

        def take(x: torch.Tensor) -> torch.Tensor:
            return x.gather(1, order[:, :, None].expand(B, G, x.shape[-1]))

        # Local rows: window keys + the global tokens' (local) keys and values.
        out = sliding_window_attention(q, k, v, self.num_heads, self.one_sided_attn_window_size,
                                       key_in_window, is_index_masked, take(k), take(v), global_ok, dropout_p=p)
        # Global rows: the global projections, over every non-padding token.
        g_out = global_attention(self.query_global(take(hidden_states)), self.key_global(hidden_states),
                                 self.value_global(hidden_states), self.num_heads, ~is_index_masked, global_ok,
                                 dropout_p=p)
        rows = is_index_global_attn.nonzero(as_tuple=True)  # row-major: same order as `order`'s real slots
        out = out.index_put(rows, g_out[global_ok])
        return (out,)


def enabled_layers(model: torch.nn.Module) -> tuple[int, int]:
    """(fast layers, HF-implementation layers) among the model's Longformer self-attention modules."""
    fast = sum(type(m) is LongformerSDPAAttention for m in model.modules())
    hf = sum(type(m) is LongformerSelfAttention for m in model.modules())
    return fast, hf


def enable(model: Any, strict: bool = False) -> Any:
    """Switch every `LongformerSelfAttention` of `model` to `LongformerSDPAAttention`, in place.

    Weights are not copied or moved: each module keeps its parameters, so `state_dict()` and saved
    checkpoints are unchanged (plain HF Longformer) and an existing optimizer stays valid. Models without
    Longformer attention are returned unchanged (or, with `strict`, refused with a LongctxError).

    Args:
        model: any torch module, typically a `Longformer*` transformers model.
        strict: raise if the model has no Longformer self-attention to switch.

    Returns:
        The same model object.
    """
    n = 0
    for module in model.modules():
        if type(module) is LongformerSelfAttention:  # exact type: leave other subclasses alone
            module.__class__ = LongformerSDPAAttention
            n += 1
    fast, _ = enabled_layers(model)
    if fast == 0 and strict:
        raise LongctxError(f"{type(model).__name__}: no Longformer self-attention layers to switch to the fast path")
    if n:
        log.debug("fast Longformer attention: %d layers switched", n)
    return model


def disable(model: Any) -> Any:
    """Switch `LongformerSDPAAttention` modules back to HF's `LongformerSelfAttention`, in place."""
    for module in model.modules():
        if type(module) is LongformerSDPAAttention:
            module.__class__ = LongformerSelfAttention
    return model

