"""longctx.attention: the chunked-SDPA Longformer attention equals HF's LongformerSelfAttention.

Exactness is checked two ways: against HF itself in fp32 (outputs and gradients, max |diff| < 1e-5),
and against a dense [L, L] band-mask reference in fp64 (to 1e-10), which also covers what HF cannot
run (lengths that are not a multiple of the window, every chunking of the sequence).
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers import AutoModel, BertConfig, BertModel, LongformerConfig, LongformerForMaskedLM, LongformerModel
from transformers.models.longformer.modeling_longformer import LongformerSelfAttention

from longctx import attention
from longctx.attention import LongformerSDPAAttention
from longctx.common import LongctxError

TOL = 1e-5  # fp32, dropout off (issue #9)


def tiny_config(window=(4, 8), layers=2, dropout=0.0, **kw) -> LongformerConfig:
    return LongformerConfig(vocab_size=60, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                            intermediate_size=64, attention_window=list(window), max_position_embeddings=130,
                            hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, pad_token_id=1, **kw)


def tiny_pair(**kw) -> tuple[LongformerModel, LongformerModel]:
    """(HF model, the same weights with the fast path), both in eval mode."""
    torch.manual_seed(0)
    hf = LongformerModel(tiny_config(**kw)).eval()
    return hf, attention.enable(copy.deepcopy(hf))


def batch(lengths: list[int], seq: int, global_at: list[list[int]], seed: int = 0):
    """input_ids, attention_mask (zeros after each length) and global_attention_mask for a padded batch."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 60, (len(lengths), seq), generator=g)
    mask = torch.zeros(len(lengths), seq, dtype=torch.long)
    glob = torch.zeros(len(lengths), seq, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        ids[i, n:] = 1
        glob[i, global_at[i]] = 1
    return ids, mask, glob


def run(model, ids, mask, glob):
    """Output and every gradient of a fixed weighted loss (normalised per token, so gradients are O(1))."""
    model.zero_grad()
    out = model(input_ids=ids, attention_mask=mask, global_attention_mask=glob).last_hidden_state
    weights = torch.linspace(-1, 1, out.numel()).view_as(out)
    ((out * weights).sum() / out.shape[:2].numel()).backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def max_diffs(a, b) -> tuple[float, float]:
    (out_a, grads_a), (out_b, grads_b) = a, b
    assert grads_a.keys() == grads_b.keys()
    return ((out_a - out_b).abs().max().item(),
            max((grads_a[n] - grads_b[n]).abs().max().item() for n in grads_a))


CASES = {
    # name: (windows, seq, lengths, global positions per sequence)
    "plain": ((4, 8), 16, [16], [[]]),
    "padding": ((4, 8), 24, [17], [[]]),
    "global": ((4, 8), 24, [24], [[0, 1, 13]]),
    "not-multiple-of-window": ((4, 8), 21, [21], [[0]]),
    "batch2-different-padding-and-globals": ((4, 8), 37, [37, 22], [[0, 5, 30], [2]]),
    "global-count-differs-one-has-none": ((8, 8), 40, [40, 9], [[0, 1, 2, 3], []]),
    "short-single-chunk-layers": ((8, 16), 10, [10, 7], [[0], [0, 1]]),
    "wide-windows-long-seq": ((4, 16), 64, [64, 50], [[0, 40], [3]]),
    "a-sequence-that-is-all-padding": ((4, 8), 24, [24, 0, 5], [[0, 1], [], [2]]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_model_outputs_and_gradients_equal_hf(case):
    windows, seq, lengths, global_at = CASES[case]
    hf, fast = tiny_pair(window=windows)
    ids, mask, glob = batch(lengths, seq, global_at)
    out_diff, grad_diff = max_diffs(run(hf, ids, mask, glob), run(fast, ids, mask, glob))
    assert out_diff < TOL and grad_diff < TOL, (out_diff, grad_diff)


def layer_inputs(batch_size, seq, lengths, global_at, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch_size, seq, 32, generator=g, dtype=dtype)
    masked = torch.ones(batch_size, seq, dtype=torch.bool)
    glob = torch.zeros(batch_size, seq, dtype=torch.bool)
    for i, n in enumerate(lengths):
        masked[i, :n] = False
        glob[i, global_at[i]] = True
    # The layer-level mask LongformerModel builds: min for padding, 0 local, max global.
    ext = torch.zeros(batch_size, seq, dtype=dtype)
    ext[masked] = torch.finfo(dtype).min
    ext[glob] = torch.finfo(dtype).max
    return hidden, ext, masked, glob


@pytest.mark.parametrize("with_global", [False, True])
def test_layer_equals_hf_including_input_gradients(with_global):
    """Layer-level call with HF's own mask format; gradients of an un-normalised loss, inputs included."""
    torch.manual_seed(1)
    hf = LongformerSelfAttention(tiny_config(window=(8,), layers=1), layer_id=0).eval()
    fast = attention.enable(copy.deepcopy(hf))
    hidden, ext, masked, glob = layer_inputs(2, 32, [32, 19], [[0, 9, 20], [1]] if with_global else [[], []])
    results = []
    for module in (hf, fast):
        h = hidden.clone().requires_grad_(True)
        out = module(h, attention_mask=ext, is_index_masked=masked, is_index_global_attn=glob,
                     is_global_attn=bool(glob.any()))
        assert len(out) == 1
        out[0].mul(torch.linspace(-1, 1, out[0].numel()).view_as(out[0])).sum().backward()
        grads = {n: p.grad for n, p in module.named_parameters() if p.grad is not None}
        grads["hidden_states"] = h.grad
        results.append((out[0].detach(), grads))
    out_diff, grad_diff = max_diffs(*results)
    assert out_diff < TOL and grad_diff < TOL, (out_diff, grad_diff)
    assert results[1][0][masked].abs().max() == 0  # padding rows are exactly 0, as in HF


def dense_reference(module, hidden, masked, glob):
    """Longformer attention written densely: an explicit [L, L] mask of who attends to whom."""
    B, L, E = hidden.shape
    H, w = module.num_heads, module.one_sided_attn_window_size
    d = E // H

    def heads(x):
        return x.view(B, L, H, d).transpose(1, 2)

    def attend(q, k, v, allowed):
        scores = (q @ k.transpose(-1, -2) / math.sqrt(d)).masked_fill(~allowed[:, None], float("-inf"))
        return torch.nan_to_num(scores.softmax(-1)) @ v  # all-masked (padding) rows -> 0

    pos = torch.arange(L)
    near = (pos[:, None] - pos[None, :]).abs() <= w
    keys_ok = ~masked[:, None, :]
    local = attend(heads(module.query(hidden)), heads(module.key(hidden)), heads(module.value(hidden)),
                   (near[None] | glob[:, None, :]) & keys_ok)
    out = local
    if glob.any():
        glob_rows = attend(heads(module.query_global(hidden)), heads(module.key_global(hidden)),
                           heads(module.value_global(hidden)), keys_ok.expand(B, L, L))
        out = torch.where(glob[:, None, :, None], glob_rows, local)
    out = out.transpose(1, 2).reshape(B, L, E)
    return out.masked_fill(masked[:, :, None], 0.0)


@pytest.mark.parametrize("seq,lengths,global_at", [
    (5, [5, 3], [[0], []]),          # shorter than the window: one chunk
    (12, [12, 12], [[], []]),        # exactly 3w: one chunk
    (13, [13, 8], [[0, 12], [7]]),   # chunked, last chunk partial
    (37, [37, 30], [[0, 1, 2], []]),
    (40, [1, 40], [[0], [39]]),      # a sequence of one token
    (13, [0, 13], [[], [0, 5]]),     # a sequence with no token at all
])
@pytest.mark.parametrize("block", [None, 1, 3, 8])
def test_layer_equals_dense_reference_fp64(seq, lengths, global_at, block):
    """Every chunking (block size) and any length gives the dense result, outputs and gradients, in fp64."""
    torch.manual_seed(2)
    module = LongformerSDPAAttention(tiny_config(window=(8,), layers=1), layer_id=0).double().eval()
    hidden, ext, masked, glob = layer_inputs(2, seq, lengths, global_at, dtype=torch.float64)
    results = []
    for fn in ("ref", "fast"):
        module.zero_grad()
        h = hidden.clone().requires_grad_(True)
        if fn == "ref":
            out = dense_reference(module, h, masked, glob)
        elif block is None:
            out = module(h, attention_mask=ext)[0]  # the derived masks come from attention_mask alone
        else:  # the chunking itself, with globals handled as in forward()
            out = _forward_with_block(module, h, masked, glob, block)
        out.mul(torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
        grads["hidden_states"] = h.grad
        results.append((out.detach(), grads))
    out_diff, grad_diff = max_diffs(*results)
    assert out_diff < 1e-10 and grad_diff < 1e-10, (out_diff, grad_diff)


def _forward_with_block(module, h, masked, glob, block):
    B = h.shape[0]
    q, k, v = module.query(h), module.key(h), module.value(h)
    G = int(glob.sum(1).max())
    order = torch.argsort((~glob).to(torch.int8), dim=1, stable=True)[:, :G]
    ok = torch.arange(G)[None] < glob.sum(1)[:, None]
    take = lambda x: x.gather(1, order[:, :, None].expand(B, G, x.shape[-1]))  # noqa: E731
    out = attention.sliding_window_attention(
        q, k, v, module.num_heads, module.one_sided_attn_window_size, ~(masked | glob), masked,
        take(k) if G else None, take(v) if G else None, ok if G else None, block=block)
    if G:
        g_out = attention.global_attention(module.query_global(take(h)), module.key_global(h),
                                           module.value_global(h), module.num_heads, ~masked, ok)
        out = out.index_put(glob.nonzero(as_tuple=True), g_out[ok])
    return out


def test_enable_keeps_weights_and_saved_model_is_plain_hf(tmp_path):
    hf, _ = tiny_pair()
    before = {k: v.clone() for k, v in hf.state_dict().items()}
    params = {n: p for n, p in hf.named_parameters()}
    fast = attention.enable(hf)
    assert fast is hf and attention.enabled_layers(fast) == (2, 0)
    after = fast.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert all(p is params[n] for n, p in fast.named_parameters())  # same objects: optimizers stay valid

    ids, mask, glob = batch([20, 14], 24, [[0, 3], [0]])
    expected = fast(input_ids=ids, attention_mask=mask, global_attention_mask=glob).last_hidden_state
    fast.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()  # no longctx code involved
    assert type(loaded) is LongformerModel
    assert attention.enabled_layers(loaded) == (0, 2)
    got = loaded(input_ids=ids, attention_mask=mask, global_attention_mask=glob).last_hidden_state
    assert (got - expected).abs().max().item() < TOL

    attention.disable(fast)
    assert attention.enabled_layers(fast) == (0, 2)
    assert all(type(layer.attention.self) is LongformerSelfAttention for layer in fast.encoder.layer)


def test_output_attentions_falls_back_to_hf():
    hf, fast = tiny_pair()
    ids, mask, glob = batch([24, 15], 24, [[0, 1], [4]])
    kw = dict(input_ids=ids, attention_mask=mask, global_attention_mask=glob, output_attentions=True)
    a, b = hf(**kw), fast(**kw)
    assert len(b.attentions) == 2 and len(b.global_attentions) == 2
    for x, y in zip(a.attentions + a.global_attentions, b.attentions + b.global_attentions):
        assert torch.equal(x, y)
    assert (a.last_hidden_state - b.last_hidden_state).abs().max() < TOL


def test_dropout_follows_training_flag_and_config():
    torch.manual_seed(0)
    hf = LongformerModel(tiny_config(dropout=0.0)).eval()
    model = attention.enable(copy.deepcopy(hf))
    for layer in model.encoder.layer:
        layer.attention.self.dropout = 0.5  # what config.attention_probs_dropout_prob = 0.5 sets
    ids, mask, glob = batch([24], 24, [[0]])
    kw = dict(input_ids=ids, attention_mask=mask, global_attention_mask=glob)
    model.eval()
    eval_out = model(**kw).last_hidden_state
    assert torch.equal(eval_out, model(**kw).last_hidden_state)
    assert (eval_out - hf(**kw).last_hidden_state).abs().max() < TOL
    model.train()  # hidden dropout is 0, so any difference comes from attention dropout
    torch.manual_seed(1)
    first = model(**kw).last_hidden_state
    second = model(**kw).last_hidden_state
    assert not torch.allclose(first, second) and not torch.allclose(first, eval_out)

    dropped = LongformerSDPAAttention(tiny_config(dropout=0.3), layer_id=0)
    assert dropped.dropout == 0.3


def test_gradient_checkpointing_matches():
    hf, fast = tiny_pair()
    for m in (hf, fast):
        (getattr(m, "activation_checkpointing_enable", None) or m.gradient_checkpointing_enable)()
        m.train()
    ids, mask, glob = batch([24, 20], 24, [[0], [1, 2]])
    out_diff, grad_diff = max_diffs(run(hf, ids, mask, glob), run(fast, ids, mask, glob))
    assert out_diff < TOL and grad_diff < TOL


def test_enable_on_other_models():
    bert = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32))
    assert attention.enable(bert) is bert  # not a Longformer: unchanged
    assert attention.enabled_layers(bert) == (0, 0)
    with pytest.raises(LongctxError, match="no Longformer self-attention"):
        attention.enable(bert, strict=True)


def _tiny_long_mlm(tmp_path, tiny_encoder_dir) -> str:
    """A tiny converted Longformer MLM (longctx.convert when present, else built from a config)."""
    out = tmp_path / "long"
    try:
        from longctx.convert import to_long
    except ImportError:
        to_long = None
    if to_long is not None:
        to_long(str(tiny_encoder_dir("roberta")), str(out), max_pos=256, attention_window=16)
    else:
        torch.manual_seed(0)
        LongformerForMaskedLM(tiny_config(window=(16, 16), max_position_embeddings=258)).save_pretrained(out)
    return str(out)


def test_whole_model_finetune_reaches_same_loss(tmp_path, tiny_encoder_dir):
    """Issue #9 item 4: a few fine-tuning steps with and without the fast path give the same losses."""
    path = _tiny_long_mlm(tmp_path, tiny_encoder_dir)

    def train(fast: bool) -> list[float]:
        torch.manual_seed(0)
        model = LongformerForMaskedLM.from_pretrained(path, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        if fast:
            attention.enable(model, strict=True)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(0)
        losses = []
        for _ in range(5):
            ids = torch.randint(5, model.config.vocab_size, (2, 90), generator=g)
            mask = torch.ones_like(ids)
            mask[1, 61:] = 0
            ids[1, 61:] = model.config.pad_token_id
            glob = torch.zeros_like(ids)
            glob[:, :3] = 1
            labels = torch.where(torch.rand(ids.shape, generator=g) < 0.2, ids, -100).masked_fill(mask == 0, -100)
            loss = model(input_ids=ids, attention_mask=mask, global_attention_mask=glob, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses

    slow, fast = train(False), train(True)
    assert max(abs(a - b) for a, b in zip(slow, fast)) < 1e-4, (slow, fast)
    assert slow[-1] < slow[0]  # it did train
