"""Turn a pretrained RoBERTa / XLM-R / BERT-family encoder into a Longformer with more positions.

The recipe is Beltagy et al. (2020), "copy position embeddings": the source's learned position
rows are tiled up to `max_pos`, every layer's query/key/value is copied into the separate global
projections, and each layer gets a sliding attention window. The result is saved as an ordinary
Hugging Face Longformer checkpoint (safetensors), loadable with `AutoModel*` and no longctx import.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from longctx.common import LongctxError, log, prepare_output_dir

# Families differ in where position ids start. RoBERTa-style models derive them from the padding id
# (first real position = pad_token_id + 1, i.e. 2), BERT-style models count from 0. Longformer always
# uses the RoBERTa rule, so BERT tables must be shifted to start at row pad_token_id + 1.
ROBERTA_FAMILY = ("roberta", "xlm-roberta", "camembert")
BERT_FAMILY = ("bert",)
SUPPORTED = ROBERTA_FAMILY + BERT_FAMILY

# Source MLM-head parameter names -> Longformer's (`lm_head.*`).
_BERT_HEAD = {
    "cls.predictions.transform.dense.": "lm_head.dense.",
    "cls.predictions.transform.LayerNorm.": "lm_head.layer_norm.",
    "cls.predictions.decoder.": "lm_head.decoder.",
    "cls.predictions.bias": "lm_head.bias",
}


def _quiet_transformers():
    """Loading a headless checkpoint into an MLM class prints a long load report; we decide ourselves."""
    import transformers

    level = transformers.logging.get_verbosity()
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    def restore():
        transformers.logging.set_verbosity(level)
        if bars:
            transformers.utils.logging.enable_progress_bar()

    return restore


def _load_source(model: str):
    """Load the source's config, tokenizer and weights (with the MLM head when it has one)."""
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoTokenizer

    looks_local = os.path.sep in model or model.startswith(".") or Path(model).exists()
    if looks_local and not Path(model).is_dir():
        raise LongctxError(f"{model}: source model not found")
    try:
        config = AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as e:
        where = "folder has no usable config.json" if looks_local else "not found locally or on the Hugging Face hub"
        raise LongctxError(f"{model}: source model {where} ({str(e).splitlines()[0][:160]})") from None
    if config.model_type not in SUPPORTED:
        raise LongctxError(f"{model}: unsupported architecture '{config.model_type}' "
                           f"(supported: {', '.join(SUPPORTED)})")
    try:
        tokenizer = AutoTokenizer.from_pretrained(model)
    except (OSError, ValueError) as e:
        raise LongctxError(f"{model}: cannot load the source tokenizer ({str(e).splitlines()[0][:160]})") from None

    restore = _quiet_transformers()
    try:
        mlm, info = AutoModelForMaskedLM.from_pretrained(model, output_loading_info=True)
        head_missing = any(k.startswith(("cls.", "lm_head.")) for k in info["missing_keys"])
        source = AutoModel.from_pretrained(model) if head_missing else mlm
    finally:
        restore()
    return config, tokenizer, source, not head_missing


def _position_offset(model_type: str, pad_token_id: int) -> int:
    """Index of the first real (non-padding) position row in the source's table."""
    return pad_token_id + 1 if model_type in ROBERTA_FAMILY else 0


def _long_state_dict(source, src_config, long_config, has_head: bool) -> dict[str, Any]:
    """The source's weights renamed to Longformer's, with tiled positions and copied global projections."""
    import torch

    prefix = source.base_model_prefix + "."  # "roberta." or "bert."
    base_target = "longformer." if has_head else ""
    state: dict[str, Any] = {}
    for key, tensor in source.state_dict().items():
        if key.endswith("position_ids") or key.endswith("token_type_ids"):
            continue  # buffers; Longformer builds its own, sized from the new config
        if has_head and not key.startswith(prefix):
            for old, new in _BERT_HEAD.items():
                if key.startswith(old):
                    key = new + key[len(old):]
                    break
            state[key] = tensor
            continue
        name = key[len(prefix):] if key.startswith(prefix) else key
        state[base_target + name] = tensor

    emb = base_target + "embeddings.position_embeddings.weight"
    old = state[emb]
    src_offset = _position_offset(src_config.model_type, src_config.pad_token_id)
    learned = old[src_offset:]
    new_offset = long_config.pad_token_id + 1
    new = old.new_zeros(long_config.max_position_embeddings, old.shape[1])
    if src_offset:  # keep the source's special rows (RoBERTa's 0 and padding 1)
        new[:src_offset] = old[:src_offset]
    max_pos = long_config.max_position_embeddings - new_offset
    reps = -(-max_pos // learned.shape[0])
    new[new_offset:] = learned.repeat(reps, 1)[:max_pos]
    state[emb] = new

    for layer in range(long_config.num_hidden_layers):
        attn = f"{base_target}encoder.layer.{layer}.attention.self."
        for proj in ("query", "key", "value"):
            for part in ("weight", "bias"):
                state[f"{attn}{proj}_global.{part}"] = state[f"{attn}{proj}.{part}"].clone()
    return {k: v.contiguous() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def _long_config(src_config, tokenizer, max_pos: int, attention_window: int):
    from transformers import LongformerConfig

    pad = src_config.pad_token_id if src_config.pad_token_id is not None else tokenizer.pad_token_id
    fields = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
              "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "type_vocab_size",
              "initializer_range", "layer_norm_eps")
    return LongformerConfig(
        **{f: getattr(src_config, f) for f in fields},
        max_position_embeddings=max_pos + pad + 1,
        pad_token_id=pad,
        bos_token_id=tokenizer.cls_token_id if tokenizer.bos_token_id is None else tokenizer.bos_token_id,
        eos_token_id=tokenizer.sep_token_id if tokenizer.eos_token_id is None else tokenizer.eos_token_id,
        sep_token_id=tokenizer.sep_token_id,
        attention_window=[attention_window] * src_config.num_hidden_layers,
        tie_word_embeddings=getattr(src_config, "tie_word_embeddings", True),
    )


def source_positions(config) -> int:
    """How many token positions a RoBERTa/BERT-family config can embed."""
    return config.max_position_embeddings - _position_offset(config.model_type, config.pad_token_id or 0)


def max_tokens(config) -> int:
    """How many tokens a (converted) model accepts in one sequence."""
    if config.model_type == "longformer":
        return config.max_position_embeddings - (config.pad_token_id + 1)
    return source_positions(config)


def add_length_guard(model):
    """Make over-long inputs fail with a clear message instead of an IndexError deep in the embeddings."""
    limit = max_tokens(model.config)

    def check(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
            length = None if ids is None else ids.shape[1]
        else:
            length = ids.shape[-1]
        if length is not None and length > limit:
            raise LongctxError(f"input of {length} tokens is longer than the model's {limit} positions "
                               f"(truncate to max_length <= {limit}, or convert with a larger --max-pos)")

    model.register_forward_pre_hook(check, with_kwargs=True)
    return model


def to_long(model: str | os.PathLike, out: str | os.PathLike, *, max_pos: int = 4096, attention_window: int = 512, force: bool = False):
    """Convert an encoder to a Longformer with `max_pos` positions and save it (with its tokenizer) to `out`.

    Returns the converted model (LongformerForMaskedLM when the source has an MLM head, else LongformerModel).
    """
    import torch
    from transformers import LongformerForMaskedLM, LongformerModel

    start = time.perf_counter()
    model = str(model)
    if attention_window <= 0 or attention_window % 2:
        raise LongctxError(f"attention window must be a positive even number, got {attention_window}")
    if max_pos % attention_window:
        raise LongctxError(f"max_pos {max_pos} is not a multiple of the attention window {attention_window}")
    src_config, tokenizer, source, has_head = _load_source(model)
    n_src = source_positions(src_config)
    if max_pos <= n_src:
        raise LongctxError(f"{model}: max_pos {max_pos} is not larger than the source's {n_src} positions")
    out_dir = prepare_output_dir(out, force=force)

    config = _long_config(src_config, tokenizer, max_pos, attention_window)
    config.longctx = {"converted_from": model, "source_model_type": src_config.model_type,
                      "source_positions": n_src}
    with torch.device("meta"):  # skip random init: every weight comes from the source
        long_model = (LongformerForMaskedLM if has_head else LongformerModel)(config)
    state = _long_state_dict(source, src_config, config, has_head)
    missing, unexpected = long_model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not k.endswith("position_ids") and k != "lm_head.decoder.weight"]
    if missing or unexpected:
        raise LongctxError(f"{model}: weights do not map onto Longformer (missing {missing[:4]}, "
                           f"unexpected {unexpected[:4]})")
    long_model.tie_weights()
    # Buffers were created on the meta device; rebuild them for the new size.
    emb = long_model.base_model.embeddings
    if hasattr(emb, "position_ids"):
        emb.register_buffer("position_ids", torch.arange(config.max_position_embeddings).expand((1, -1)),
                            persistent=False)
    long_model.eval()

    restore = _quiet_transformers()
    try:
        long_model.save_pretrained(out_dir, safe_serialization=True)
    finally:
        restore()
    tokenizer.model_max_length = max_pos
    tokenizer.save_pretrained(out_dir)
    n_params = sum(p.numel() for p in long_model.parameters())
    log.info("converted %s (%s, %s): %d -> %d positions, attention window %d, %s, %.1fM parameters, %.1f s -> %s",
             model, src_config.model_type, "MLM head" if has_head else "no MLM head", n_src, max_pos,
             attention_window, type(long_model).__name__, n_params / 1e6, time.perf_counter() - start, out_dir)
    return long_model


def convert(*, model: str, out: str, max_pos: int = 4096, attention_window: int = 512, force: bool = False) -> None:
    """Convert a RoBERTa / XLM-R / BERT-family encoder into a Longformer checkpoint.

    Args:
        model: source model folder or Hugging Face hub name (e.g. roberta-base, xlm-roberta-base).
        out: folder to write the converted model and tokenizer to.
        max_pos: number of positions of the converted model (a multiple of the attention window).
        attention_window: sliding-window size per layer (tokens attend to window/2 on each side).
        force: overwrite a non-empty output folder.
    """
    logging.getLogger("longctx").setLevel(logging.INFO)
    to_long(model, out, max_pos=max_pos, attention_window=attention_window, force=force)
