"""Flat SQuAD examples -> model windows ("features") for extractive QA, and the batch collator.

Both `prepare_*_features` functions are meant for `datasets.Dataset.map(batched=True,
remove_columns=dataset.column_names)`: they take a dict of lists (one list per column of the flat SQuAD
format: id, title, context, question, answers={"text", "answer_start"}, is_impossible) and return a dict
of lists with one row per window, so a long context yields several rows.

Windows follow the convention of `tokenizer(question, context, truncation="only_second",
return_overflowing_tokens=True, stride=doc_stride)`: `doc_stride` is the number of context tokens two
consecutive windows share (Hugging Face's `stride`), not the step between them. Nothing is padded here
(dynamic padding in `QACollator` is ~3.5x faster than padding every window to `max_length`).

Tokenisation runs the tokenizer's own `tokenizers` backend rather than `tokenizer(...)`: in SQuAD about five
questions share each paragraph, so encoding every distinct context of a batch once and building the windows with
the backend's `post_process` (truncation with stride + special tokens: what `tokenizer(...)` itself does for a
pair after encoding both halves separately) gives the same windows for a fraction of the work. The windows are
identical to the `tokenizer(...)` call above (tests/qa/test_features.py checks it for the three families).
"""
from __future__ import annotations

import bisect
import logging
import re
import unicodedata
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Iterable

from longctx.common import LongctxError

log = logging.getLogger("longctx.qa.features")

_START = itemgetter(0)
_END = itemgetter(1)


def default_max_question_tokens(tokenizer, max_length: int, doc_stride: int) -> int:
    """Questions longer than this many tokens are truncated when `max_question_tokens` is not given.

    It is the smaller of `max_length // 2` (plenty for real questions) and the most the window can hold while
    still advancing through the context (the tokenizer panics unless the context part exceeds the stride)."""
    return min(max_length // 2, _question_token_limit(tokenizer, max_length, doc_stride))


def _question_token_limit(tokenizer, max_length: int, doc_stride: int) -> int:
    n_special = tokenizer.num_special_tokens_to_add(pair=True)
    limit = max_length - n_special - doc_stride - 1
    if doc_stride < 0 or limit < 1:
        raise LongctxError(
            f"doc_stride={doc_stride} with max_length={max_length}: windows need 0 <= doc_stride < "
            f"max_length - {n_special} special tokens - question tokens "
            f"(use doc_stride <= {max_length - n_special - 2})")
    return limit


def _backend(tokenizer):
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is None:
        raise LongctxError(f"{type(tokenizer).__name__}: QA features need a fast (tokenizers-backed) tokenizer "
                           "for offset mappings")
    return backend


def _column(examples: dict[str, list], name: str) -> list:
    try:
        return examples[name]
    except KeyError:
        raise LongctxError(f"examples: missing column {name!r} (have: {', '.join(sorted(examples))})") from None


def _encode_windows(examples: dict[str, list], tokenizer, max_length: int, doc_stride: int,
                    max_question_tokens: int | None):
    """Tokenise a batch; return (per-example list of window Encodings, context sequence index, question lengths)."""
    backend = _backend(tokenizer)
    questions = [q.lstrip() for q in _column(examples, "question")]
    contexts = _column(examples, "context")
    limit = _question_token_limit(tokenizer, max_length, doc_stride)
    if max_question_tokens is None:
        max_q = min(max_length // 2, limit)
    elif not 1 <= max_question_tokens <= limit:
        raise LongctxError(f"max_question_tokens={max_question_tokens}: must be between 1 and {limit} for "
                           f"max_length={max_length}, doc_stride={doc_stride} so that windows advance")
    else:
        max_q = max_question_tokens
    context_first = tokenizer.padding_side == "left"

    saved_truncation, saved_padding = backend.truncation, backend.padding
    saved_special, saved_post = backend.encode_special_tokens, backend.post_processor
    try:
        # Tokenizer files may carry their own padding/truncation (MiniLM's pads to 128): switch them off while
        # encoding the halves, and restore everything afterwards (also keeps datasets' fingerprint stable).
        # The post-processor must run once, in post_process: encode() would already apply it (RoBERTa's
        # trim_offsets would then trim the offsets twice).
        backend.no_truncation()
        backend.no_padding()
        backend.post_processor = None
        backend.encode_special_tokens = bool(getattr(tokenizer, "split_special_tokens", False))
        unique = list(dict.fromkeys(contexts))
        slot = {c: i for i, c in enumerate(unique)}
        context_encs = backend.encode_batch(unique, add_special_tokens=False)
        question_encs = backend.encode_batch(questions, add_special_tokens=False)

        too_long = [i for i, enc in enumerate(question_encs) if len(enc) > max_q]
        for i in too_long:
            question_encs[i] = _truncate_question(backend, questions[i], question_encs[i], max_q)
        if too_long:
            ids = examples.get("id")
            example = f" (first: {ids[too_long[0]]})" if ids is not None else ""
            log.warning("%d of %d questions are longer than %d tokens and were truncated to fit max_length=%d "
                        "with doc_stride=%d%s", len(too_long), len(questions), max_q, max_length, doc_stride, example)

        backend.post_processor = saved_post
        backend.enable_truncation(max_length, stride=doc_stride,
                                  strategy="only_first" if context_first else "only_second", direction="right")
        windows = []
        for q_enc, context in zip(question_encs, contexts):
            c_enc = context_encs[slot[context]]
            pair = (c_enc, q_enc) if context_first else (q_enc, c_enc)
            enc = backend.post_process(*pair, True)
            windows.append([enc, *enc.overflowing])
    finally:
        backend.post_processor = saved_post
        backend.no_truncation()
        if saved_truncation is not None:
            backend.enable_truncation(**saved_truncation)
        if saved_padding is not None:
            backend.enable_padding(**saved_padding)
        backend.encode_special_tokens = saved_special
    return windows, (0 if context_first else 1), [len(q) for q in question_encs]


def _truncate_question(backend, question: str, enc, max_q: int):
    # Encoding.truncate would keep the cut-off tail as "overflowing" windows that post_process multiplies with
    # the context windows; re-encoding the text up to the last kept token avoids that.
    keep = max_q
    while keep > 0:
        cut = question[:enc.offsets[keep - 1][1]]
        new = backend.encode(cut, add_special_tokens=False)
        if len(new) <= max_q:
            return new
        keep -= 1
    return backend.encode("", add_special_tokens=False)


def _window_layout(enc, context_seq: int, cls_id: int | None):
    """(ids, sequence ids, first and last context token or None, CLS index) of one window."""
    ids = enc.ids
    seq = enc.sequence_ids
    try:
        c_start = seq.index(context_seq)
        c_end = len(seq) - 1 - seq[::-1].index(context_seq)
    except ValueError:  # empty context
        c_start = c_end = None
    if cls_id is None or not ids or ids[0] == cls_id:
        cls = 0
    else:
        cls = ids.index(cls_id) if cls_id in ids else 0
    return ids, seq, c_start, c_end, cls


def _model_inputs(out: dict[str, list], ids: list[int], types: list[int] | None, seq: list, cls: int,
                  question_seq: int, q_len: int, global_attention: bool) -> None:
    out["input_ids"].append(ids)
    out["attention_mask"].append([1] * len(ids))
    if types is not None:
        out["token_type_ids"].append(types)
    if global_attention:
        mask = [0] * len(ids)
        if q_len:
            q_start = seq.index(question_seq)
            mask[q_start:q_start + q_len] = [1] * q_len
        mask[cls] = 1
        out["global_attention_mask"].append(mask)


class _TypeIds:
    """token_type_ids of an example's windows.

    `post_process` types only the first window by the template; the overflowing ones keep the type id the
    context was encoded with (0 here, where `tokenizer(q, c)` would have encoded it as 1). Every window has the
    same layout around its context tokens, so the first window's types give the others'."""

    def __init__(self, first, c_start: int | None, c_end: int | None):
        self.types = first.type_ids
        self.n_context = None if c_start is None else c_end - c_start + 1
        if c_start is not None:
            self.prefix, self.context, self.suffix = self.types[:c_start], self.types[c_start], self.types[c_end + 1:]

    def __call__(self, c_start: int | None, c_end: int | None) -> list[int]:
        if c_start is None or self.n_context is None:
            return list(self.types)
        return self.prefix + [self.context] * (c_end - c_start + 1) + self.suffix


def _output_keys(tokenizer, global_attention: bool, extra: Iterable[str]) -> tuple[dict[str, list], bool]:
    with_types = "token_type_ids" in tokenizer.model_input_names
    keys = ["input_ids", "attention_mask"] + (["token_type_ids"] if with_types else [])
    keys += (["global_attention_mask"] if global_attention else []) + list(extra)
    return {k: [] for k in keys}, with_types


def prepare_train_features(examples: dict[str, list], tokenizer, max_length: int = 384, doc_stride: int = 128,
                           global_attention: bool = False, max_question_tokens: int | None = None) -> dict[str, list]:
    """Tokenise a batch of flat SQuAD examples into training windows with start/end token labels.

    Args:
        examples: Columns of flat SQuAD examples (dict of lists, as `Dataset.map(batched=True)` passes them):
            question, context, answers ({"text": [...], "answer_start": [...]}), optional is_impossible and id.
        tokenizer: A fast (tokenizers-backed) transformers tokenizer. With `padding_side == "left"` the context
            comes first and the question second.
        max_length: Tokens per window, special tokens included.
        doc_stride: Context tokens shared by consecutive windows of one example (HF's `stride`).
        global_attention: Add `global_attention_mask` (1 on CLS and the question tokens) for Longformer models.
        max_question_tokens: Longer questions are truncated (one warning per call says how many). Default
            `default_max_question_tokens(...)`: min(max_length // 2, what still lets windows advance).

    Returns:
        Columns input_ids, attention_mask, token_type_ids (when the tokenizer uses them), global_attention_mask
        (when asked), start_positions and end_positions: one row per window. The label is the first and last
        token of the first gold answer when the window holds it entirely, else the CLS index (also for
        unanswerable questions). An answer not at its answer_start moves to the nearest occurrence of its text;
        an example whose answer text is not in its context has no windows (one warning per call counts both).
    """
    windows, context_seq, q_lens = _encode_windows(examples, tokenizer, max_length, doc_stride, max_question_tokens)
    contexts = examples["context"]
    answers = _column(examples, "answers")
    impossible = examples.get("is_impossible") or [False] * len(contexts)
    ids_col = examples.get("id")
    out, with_types = _output_keys(tokenizer, global_attention, ["start_positions", "end_positions"])
    cls_id = tokenizer.cls_token_id
    question_seq = 1 - context_seq
    realigned, dropped = 0, []
    for i, example_windows in enumerate(windows):
        span = None
        texts, starts = answers[i]["text"], answers[i]["answer_start"]
        if not impossible[i] and len(texts) > 0:
            span, moved = _char_span(contexts[i], texts[0], starts[0])
            if span is None:  # no usable answer: neither a span nor "unanswerable" would be a true label
                dropped.append(i)
                continue
            realigned += moved
        types = None
        for enc in example_windows:
            ids, seq, c_start, c_end, cls = _window_layout(enc, context_seq, cls_id)
            if with_types:
                types = types or _TypeIds(enc, c_start, c_end)
            _model_inputs(out, ids, types and types(c_start, c_end), seq, cls, question_seq, q_lens[i],
                          global_attention)
            start = end = cls
            if span is not None and c_start is not None:
                offsets = enc.offsets
                char_start, char_end = span
                if offsets[c_start][0] <= char_start and char_end <= offsets[c_end][1]:
                    # first token ending after the answer start / last token starting before the answer end
                    # (so a character split into several byte tokens is covered entirely)
                    s = bisect.bisect_right(offsets, char_start, c_start, c_end + 1, key=_END)
                    e = bisect.bisect_left(offsets, char_end, c_start, c_end + 1, key=_START) - 1
                    if s <= e:
                        start, end = s, e
            out["start_positions"].append(start)
            out["end_positions"].append(end)
    if realigned or dropped:
        first = f" (first left out: {ids_col[dropped[0]]})" if dropped and ids_col is not None else ""
        log.warning("of %d examples, %d answers not at their answer_start were moved to the nearest occurrence "
                    "of their text and %d examples were left out (answer text blank or not in the context)%s",
                    len(contexts), realigned, len(dropped), first)
    return out


def _char_span(context: str, text: str, start: int) -> tuple[tuple[int, int] | None, bool]:
    """([start, end) of the answer without surrounding whitespace (or trailing combining marks), moved?).

    An answer not found at answer_start (data loaders let up to ~1% through with a warning) moves to the
    occurrence of its text nearest to answer_start; None when the text is not in the context or is blank."""
    moved = False
    if start < 0 or context[start:start + len(text)] != text:
        found = [m.start() for m in re.finditer(re.escape(text), context)] if text else []
        if not found:
            return None, False
        given = start
        start, moved = min(found, key=lambda s: abs(s - given)), True
    end = start + len(text)
    while start < end and context[start].isspace():
        start += 1
    # trailing combining marks too: uncased BERT tokenizers drop them (Thai vowels, Arabic tanween), so no token
    # covers them and an answer ending in one would otherwise never fit a window
    while end > start and (context[end - 1].isspace() or
                           context[end - 1] >= "\u0300" and unicodedata.category(context[end - 1])[0] == "M"):
        end -= 1
    return ((start, end) if start < end else None), moved


def prepare_eval_features(examples: dict[str, list], tokenizer, max_length: int = 384, doc_stride: int = 128,
                          global_attention: bool = False, max_question_tokens: int | None = None) -> dict[str, list]:
    """Tokenise a batch of flat SQuAD examples into evaluation windows (no labels) for `postprocess_predictions`.

    Args:
        examples: Columns of flat SQuAD examples (dict of lists): id, question, context.
        tokenizer: A fast (tokenizers-backed) transformers tokenizer.
        max_length: Tokens per window, special tokens included.
        doc_stride: Context tokens shared by consecutive windows of one example (HF's `stride`).
        global_attention: Add `global_attention_mask` (1 on CLS and the question tokens) for Longformer models.
        max_question_tokens: Longer questions are truncated with one warning per call (see
            `prepare_train_features`).

    Returns:
        The model inputs of `prepare_train_features` plus `example_id` (the example's id) and `offset_mapping`
        ((start, end) character offsets into the context for context tokens, None for every other token).
    """
    windows, context_seq, q_lens = _encode_windows(examples, tokenizer, max_length, doc_stride, max_question_tokens)
    example_ids = _column(examples, "id")
    out, with_types = _output_keys(tokenizer, global_attention, ["offset_mapping", "example_id"])
    cls_id = tokenizer.cls_token_id
    question_seq = 1 - context_seq
    for i, example_windows in enumerate(windows):
        types = None
        for enc in example_windows:
            ids, seq, c_start, c_end, cls = _window_layout(enc, context_seq, cls_id)
            if with_types:
                types = types or _TypeIds(enc, c_start, c_end)
            _model_inputs(out, ids, types and types(c_start, c_end), seq, cls, question_seq, q_lens[i],
                          global_attention)
            n = len(ids)
            if c_start is None:
                out["offset_mapping"].append([None] * n)
            else:
                out["offset_mapping"].append(
                    [None] * c_start + enc.offsets[c_start:c_end + 1] + [None] * (n - c_end - 1))
            out["example_id"].append(example_ids[i])
    return out


_PADDED = ("input_ids", "attention_mask", "token_type_ids", "global_attention_mask")
_DROPPED = ("offset_mapping", "example_id")


@dataclass
class QACollator:
    """Pad a list of QA features to the longest in the batch (rounded up to `pad_to_multiple_of`) as tensors.

    Written by hand because `DataCollatorWithPadding` (tokenizer.pad) pads only the tokenizer's own inputs and
    fails on `global_attention_mask` ("Unable to create tensor ... excessive nesting"). Pads input_ids with the
    pad id, attention_mask / token_type_ids / global_attention_mask with 0, on the tokenizer's padding side;
    start/end positions become tensors; offset_mapping and example_id are dropped."""

    tokenizer: Any
    pad_to_multiple_of: int | None = 8

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        if not features:
            raise LongctxError("QACollator: empty batch")
        rows = {k: [_as_list(f[k]) for f in features] for k in _PADDED if k in features[0]}
        if "input_ids" not in rows:
            raise LongctxError(f"QACollator: features have no input_ids (keys: {', '.join(features[0])})")
        longest = max(len(r) for r in rows["input_ids"])
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            raise LongctxError(f"{type(self.tokenizer).__name__}: the tokenizer has no pad token")
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        batch: dict[str, Any] = {}
        for key, values in rows.items():
            pad = pad_id if key == "input_ids" else 0
            if key == "token_type_ids":
                pad = getattr(self.tokenizer, "pad_token_type_id", 0)
            if left:
                padded = [[pad] * (longest - len(r)) + r for r in values]
            else:
                padded = [r + [pad] * (longest - len(r)) for r in values]
            batch[key] = torch.tensor(padded, dtype=torch.long)
        for key in features[0]:
            if key in rows or key in _DROPPED:
                continue
            values = [f[key] for f in features]
            batch[key] = (torch.stack(values) if isinstance(values[0], torch.Tensor)
                          else torch.tensor(values, dtype=torch.long if key.endswith("_positions") else None))
        return batch


def _as_list(row) -> list:
    return row.tolist() if hasattr(row, "tolist") else list(row)
