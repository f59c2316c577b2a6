"""Masked-language-model data: token blocks with BERT/RoBERTa masking, reproducible without the global RNG.

Built on `longctx.data.wikitext` (articles -> token stream -> block spans). Masking is the library's
80/10/10 rule (`DataCollatorForLanguageModeling.torch_mask_tokens`), driven by generators seeded here:

* evaluation (`masked_eval_text`): masks drawn once over the whole token stream with a fixed seed
  (`EVAL_MASK_SEED`, the same for every run and every block size), so models evaluated at different
  block sizes, and different runs, are scored on identical masked tokens;
* training (`MaskedBlocks`): masks redrawn every epoch (RoBERTa's dynamic masking) from (seed, epoch,
  block index), so a resumed run masks every batch exactly as the uninterrupted run would (the Trainer
  restores the global RNG only after it has already collated the first batch after a resume).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from longctx.common import LongctxError
from longctx.data.wikitext import (TokenizedArticles, TokenStream, block_spans, make_stream, prefix_counts,
                                   with_specials)

EVAL_MASK_SEED = 20200410  # fixed for every run: evaluations of different runs use identical masks


def special_ids(tokenizer) -> tuple[int, int, int, int]:
    """(cls, sep, pad, mask) token ids; a tokenizer without one of them is a one-line error."""
    ids = (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id, tokenizer.mask_token_id)
    missing = [n for n, i in zip(("cls", "sep", "pad", "mask"), ids) if i is None]
    if missing:
        raise LongctxError(f"{tokenizer.name_or_path}: tokenizer has no {', '.join(missing)} token; "
                           f"MLM pretraining needs cls, sep, pad and mask")
    return ids  # type: ignore[return-value]


def _masker(tokenizer, mlm_probability: float):
    """The library's 80/10/10 masking (`torch_mask_tokens`), driven by generators we seed ourselves."""
    from transformers import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=mlm_probability)


def _mask(masker, ids, special, seed: int):
    import torch

    masker.generator = torch.Generator().manual_seed(int(seed))
    inputs, labels = masker.torch_mask_tokens(ids.clone(), special_tokens_mask=special)
    return inputs, labels


def _item_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] >> 1)


class MaskedBlocks:
    """Training blocks, masked afresh in each epoch from (seed, epoch, index) (see the module docstring).

    A map-style dataset (`__len__`/`__getitem__`); the trainer sets `epoch` at each epoch start."""

    def __init__(self, stream: TokenStream, spans: list[tuple[int, int]], tokenizer,
                 mlm_probability: float, seed: int):
        import torch

        self.stream, self.spans, self.seed, self.epoch = stream, spans, seed, 0
        self.cls, self.sep, _, _ = special_ids(tokenizer)
        self.special = torch.tensor(sorted(set(tokenizer.all_special_ids)))
        self.masker = _masker(tokenizer, mlm_probability)

    def __len__(self) -> int:
        return len(self.spans)

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        s, e = self.spans[i]
        ids = torch.from_numpy(with_specials(self.stream.ids[s:e], self.cls, self.sep))[None]
        inputs, labels = _mask(self.masker, ids, torch.isin(ids, self.special), _item_seed(self.seed, self.epoch, i))
        return {"input_ids": inputs[0], "attention_mask": torch.ones_like(inputs[0]), "labels": labels[0]}


@dataclass
class MaskedText:
    """An evaluation text whose masks were drawn once over its token stream: cutting it into blocks of
    any size gives the same masked tokens."""

    stream: TokenStream
    input_ids: np.ndarray
    labels: np.ndarray
    text_tokens: int
    characters: int
    articles: int
    source: str

    @property
    def masked_tokens(self) -> int:
        return int((self.labels != -100).sum())

    def blocks(self, block_size: int, cls_id: int, sep_id: int) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        for s, e in block_spans(self.stream, block_size):
            out.append((with_specials(self.input_ids[s:e], cls_id, sep_id),
                        np.concatenate([[-100], self.labels[s:e], [-100]]).astype(np.int64)))
        return out


def masked_eval_text(tokens: TokenizedArticles, tokenizer, *, block_size: int, packing: str,
                     mlm_probability: float, max_blocks: int | None = None, seed: int = EVAL_MASK_SEED) -> MaskedText:
    """Mask an evaluation text once (fixed seed), optionally keeping only what its first `max_blocks`
    blocks of `block_size` cover."""
    import torch

    cls_id, sep_id, _, _ = special_ids(tokenizer)
    stream = make_stream(tokens, sep_id, packing)  # type: ignore[arg-type]
    if max_blocks is not None:
        spans = block_spans(stream, block_size)
        if len(spans) > max_blocks:
            tokens = tokens.prefix(prefix_counts(stream, spans[max_blocks - 1][1]), tokenizer)
            stream = make_stream(tokens, sep_id, packing)  # type: ignore[arg-type]
    ids = torch.from_numpy(stream.ids.astype(np.int64))[None]
    special = torch.isin(ids, torch.tensor(sorted(set(tokenizer.all_special_ids)))) | \
        torch.from_numpy(stream.separator)[None]
    inputs, labels = _mask(_masker(tokenizer, mlm_probability), ids, special, seed)
    text = MaskedText(stream=stream, input_ids=inputs[0].numpy(), labels=labels[0].numpy(),
                      text_tokens=tokens.n_tokens, characters=tokens.n_chars, articles=len(tokens.ids),
                      source=tokens.source)
    if text.masked_tokens == 0:
        raise LongctxError(f"{tokens.source}: evaluation text too short: no token was masked")
    return text
