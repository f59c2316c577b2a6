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

from longctx.checkpoints import staged_folder
from longctx.common import LongctxError, log, prepare_output_dir
from longctx.models import (copy_global_projections, load_config, load_mlm, model_max_tokens, position_offset,
                            quiet_transformers)

# Families whose absolute position tables convert (their position-id conventions: `models.position_offset`).
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


def _load_source(model: str):
    """The source's config, tokenizer and weights (with the MLM head when it has one)."""
    config = load_config(model, "source model")
    if config.model_type not in SUPPORTED:
        raise LongctxError(f"{model}: unsupported architecture '{config.model_type}' "
                           f"(supported: {', '.join(SUPPORTED)})")
    source, tokenizer, has_head = load_mlm(model, "source model", allow_headless=True)
    return config, tokenizer, source, has_head


def _long_state_dict(source, src_config, long_config, has_head: bool) -> dict[str, Any]:
    """The source's weights renamed to Longformer's, with tiled positions (global projections: see to_long)."""
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
    src_offset = position_offset(src_config.model_type, src_config.pad_token_id)
    learned = old[src_offset:]
    new_offset = long_config.pad_token_id + 1
    new = old.new_zeros(long_config.max_position_embeddings, old.shape[1])
    if src_offset:  # keep the source's special rows (RoBERTa's 0 and padding 1)
        new[:src_offset] = old[:src_offset]
    max_pos = long_config.max_position_embeddings - new_offset
    reps = -(-max_pos // learned.shape[0])
    new[new_offset:] = learned.repeat(reps, 1)[:max_pos]
    state[emb] = new
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


def check_sizes(max_pos: int, attention_window: int) -> None:
    """The size checks conversion runs before loading anything (public: a sweep runs them when it plans)."""
    if attention_window <= 0 or attention_window % 2:
        raise LongctxError(f"attention window must be a positive even number, got {attention_window}")
    if max_pos % attention_window:
        raise LongctxError(f"max_pos {max_pos} is not a multiple of the attention window {attention_window}")


def to_long(model: str | os.PathLike, out: str | os.PathLike, *, max_pos: int = 4096, attention_window: int = 512, force: bool = False):
    """Convert an encoder to a Longformer with `max_pos` positions and save it (with its tokenizer) to `out`.

    Returns the converted model (LongformerForMaskedLM when the source has an MLM head, else LongformerModel).
    """
    import torch
    from transformers import LongformerForMaskedLM, LongformerModel

    start = time.perf_counter()
    model = str(model)
    check_sizes(max_pos, attention_window)
    src_config, tokenizer, source, has_head = _load_source(model)
    n_src = model_max_tokens(src_config)
    if max_pos <= n_src:
        raise LongctxError(f"{model}: max_pos {max_pos} is not larger than the source's {n_src} positions")
    out_dir = Path(out)
    if out_dir.exists():  # refuse a used folder without --force; an absent one is made by the final rename
        prepare_output_dir(out_dir, force=force)

    config = _long_config(src_config, tokenizer, max_pos, attention_window)
    config.longctx = {"converted_from": model, "source_model_type": src_config.model_type,
                      "source_positions": n_src}
    with torch.device("meta"):  # skip random init: every weight comes from the source
        long_model = (LongformerForMaskedLM if has_head else LongformerModel)(config)
    state = _long_state_dict(source, src_config, config, has_head)
    missing, unexpected = long_model.load_state_dict(state, strict=False, assign=True)
    copy_global_projections(long_model)  # the source has no global projections: they start as copies
    missing = [k for k in missing if not k.endswith("position_ids") and k != "lm_head.decoder.weight"
               and not k.split(".")[-2].endswith("_global")]
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

    # written aside and renamed into place: a kill never leaves a folder that looks like a converted model
    with staged_folder(out_dir) as staged:
        with quiet_transformers():
            long_model.save_pretrained(staged, safe_serialization=True)
        tokenizer.model_max_length = max_pos
        tokenizer.save_pretrained(staged)
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

    Example:
        longctx convert --model roberta-base --out models/roberta-long --max-pos 4096
    """
    logging.getLogger("longctx").setLevel(logging.INFO)
    to_long(model, out, max_pos=max_pos, attention_window=attention_window, force=force)
