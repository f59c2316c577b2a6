"""Start/end logits of QA windows -> answer texts, n-best lists and SQuAD 2.0 no-answer scores.

Decoding follows the BERT reference (run_squad.py): in every window the `n_best` highest start and end logits
over context tokens are paired; a pair is a candidate when end >= start and it spans at most
`max_answer_length` tokens; its score is start_logit + end_logit. An example's candidates from all its windows
are ranked together (the same character span seen in two overlapping windows counts once, with its best
score). The no-answer score is start_logit + end_logit at the CLS token, the minimum over the windows, and
`null_scores` holds score_null - best_span_score: SQuAD 2.0 predicts "" when it exceeds `null_threshold`.

Everything up to the per-example n-best lists runs as numpy on all windows at once, so decoding the SQuAD dev
set takes about a second.
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from longctx.common import LongctxError, write_json

_CHUNK = 2048  # windows per numpy block: bounds memory for long windows (4096-token Longformer inputs)


@dataclass
class QAPredictions:
    """Decoded answers of a set of examples, keyed by question id.

    predictions: the answer text ("" = no answer: SQuAD 2.0 above the threshold, or no span at all). Records
        of one question over several documents (a `question_id` field: TriviaQA) also give that question
        id the answer of its best-scoring document (see `_question_predictions`).
    nbest: up to n_best entries {text, probability, start_logit, end_logit, start, end} over all windows,
        best first; start/end are character offsets into the context (end exclusive). With version_2 the
        no-answer entry (text "", start/end None) is included. probability is a softmax over the listed scores.
    null_scores: score_null - best span score (SQuAD 2.0 "null odds"; +inf when there is no span).
    best_scores: score (start_logit + end_logit) of the best span (-inf when there is none).
    span_predictions: the best span's text whatever the null score: what `find_best_threshold` needs.
    """

    predictions: dict[str, str]
    nbest: dict[str, list[dict[str, Any]]]
    null_scores: dict[str, float]
    best_scores: dict[str, float]
    span_predictions: dict[str, str] = field(default_factory=dict)
    version_2: bool = False


def _column(data: Any, name: str, what: str) -> list:
    """One column of a datasets.Dataset, a dict of lists or a list of dicts, as a Python list."""
    try:
        if hasattr(data, "with_format") and hasattr(data, "column_names"):
            if name not in data.column_names:
                raise KeyError(name)
            return data.select_columns([name]).with_format("arrow")[:].column(name).to_pylist()
        if isinstance(data, dict):
            return list(data[name])
        return [row[name] for row in data]
    except KeyError:
        raise LongctxError(f"{what}: no {name!r} field") from None


def _offsets(features: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row start in the flat arrays, token start char, token end char) with -1 for tokens outside the context."""
    if hasattr(features, "with_format") and "offset_mapping" in getattr(features, "column_names", ()):
        # Arrow straight to numpy: converting ~10^6 offset pairs to Python objects would dominate decoding.
        import pyarrow as pa

        column = features.select_columns(["offset_mapping"]).with_format("arrow")[:].column("offset_mapping")
        column = column.combine_chunks()
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            lengths = column.value_lengths().fill_null(0).to_numpy(zero_copy_only=False)
            inner = column.flatten()  # one entry per token: a [start, end] list or null
            if any(check(inner.type) for check in (pa.types.is_list, pa.types.is_large_list,
                                                   pa.types.is_fixed_size_list)):
                present = inner.is_valid().to_numpy(zero_copy_only=False)
                pairs = inner.flatten().to_numpy(zero_copy_only=False)  # values of the non-null entries only
                if pairs.size == 2 * int(present.sum()):
                    starts = np.full(present.size, -1, dtype=np.int64)
                    ends = np.full(present.size, -1, dtype=np.int64)
                    starts[present], ends[present] = pairs[0::2], pairs[1::2]
                    return np.concatenate([[0], np.cumsum(lengths)]), starts, ends
    offsets = _column(features, "offset_mapping", "features")
    lengths = np.fromiter(map(len, offsets), dtype=np.int64, count=len(offsets))
    rows = np.concatenate([[0], np.cumsum(lengths)])
    # Context tokens are one contiguous run per window: find it, then convert all runs in one go.
    run_at, run_len, runs = [], [], []
    for row, window in zip(rows.tolist(), offsets):
        n, first = len(window), 0
        while first < n and window[first] is None:
            first += 1
        last = n - 1
        while last > first and window[last] is None:
            last -= 1
        if first == n:
            continue
        run = window[first:last + 1]
        if None in run:  # not contiguous: one run per token
            for k, pair in enumerate(run):
                if pair is not None:
                    run_at.append(row + first + k), run_len.append(1), runs.append((pair,))
        else:
            run_at.append(row + first), run_len.append(len(run)), runs.append(run)
    pairs = np.fromiter(chain.from_iterable(chain.from_iterable(runs)), dtype=np.int64)
    run_len = np.asarray(run_len, dtype=np.int64)
    n_tokens = int(run_len.sum())
    if pairs.size != 2 * n_tokens:
        raise LongctxError("features: offset_mapping entries must be (start, end) pairs or None")
    index = np.repeat(np.asarray(run_at, dtype=np.int64) - (np.cumsum(run_len) - run_len), run_len) + \
        np.arange(n_tokens)
    starts = np.full(int(rows[-1]), -1, dtype=np.int64)
    ends = np.full(int(rows[-1]), -1, dtype=np.int64)
    starts[index], ends[index] = pairs[0::2], pairs[1::2]
    return rows, starts, ends


def _logit_matrix(logits: Any, n: int, name: str) -> np.ndarray:
    """[n_features, seq_len] float array; a list of 1-D rows of different lengths is padded with -inf."""
    if isinstance(logits, (list, tuple)) and logits and np.ndim(logits[0]) == 1:
        width = max(len(row) for row in logits)
        matrix = np.full((len(logits), width), -np.inf, dtype=np.float32)
        for i, row in enumerate(logits):
            matrix[i, :len(row)] = np.asarray(row, dtype=np.float32)
    else:
        matrix = np.asarray(logits)
        if matrix.dtype.kind != "f" or matrix.dtype.itemsize < 4:
            matrix = matrix.astype(np.float32)
    if matrix.ndim != 2 or matrix.shape[0] != n:
        raise LongctxError(f"{name}: expected shape [{n} features, sequence length], got {list(matrix.shape)}")
    return matrix


def _window_candidates(start: np.ndarray, end: np.ndarray, valid: np.ndarray, n_best: int, max_answer_length: int):
    """Top-n_best spans of each window (rows): (row, start token, end token, start logit, end logit), flat."""
    n, width = start.shape
    s = np.where(valid, start, -np.inf)
    e = np.where(valid, end, -np.inf)
    k = min(n_best, width)
    top_s = np.argpartition(-s, k - 1, axis=1)[:, :k]
    top_e = np.argpartition(-e, k - 1, axis=1)[:, :k]
    s_val = np.take_along_axis(s, top_s, axis=1).astype(np.float64)
    e_val = np.take_along_axis(e, top_e, axis=1).astype(np.float64)
    length = top_e[:, None, :] - top_s[:, :, None]
    score = s_val[:, :, None] + e_val[:, None, :]
    score = np.where((length >= 0) & (length < max_answer_length), score, -np.inf).reshape(n, k * k)
    # keep each window's n_best best pairs only: the example's n-best is drawn from them
    m = min(n_best, k * k)
    keep = np.argpartition(-score, m - 1, axis=1)[:, :m]
    kept = np.take_along_axis(score, keep, axis=1)
    rows, cols = np.nonzero(np.isfinite(kept))
    pair = keep[rows, cols]
    a, b = pair // k, pair % k
    return rows, top_s[rows, a], top_e[rows, b], s_val[rows, a], e_val[rows, b]


def _band_candidates(start: np.ndarray, end: np.ndarray, valid: np.ndarray, n_best: int, max_answer_length: int):
    """Exact top spans of each window over every valid (start, end) pair: the fallback for examples where the
    top-k pairing found nothing (all top ends before all top starts)."""
    out = []
    n, width = start.shape
    for row in range(n):
        s = np.where(valid[row], start[row], -np.inf).astype(np.float64)
        e = np.where(valid[row], end[row], -np.inf).astype(np.float64)
        span = min(max_answer_length, width)
        e_pad = np.concatenate([e, np.full(span - 1, -np.inf)])
        bands = np.lib.stride_tricks.sliding_window_view(e_pad, span)  # [width, span]: end = start + j
        score = (s[:, None] + bands).ravel()
        finite = np.flatnonzero(np.isfinite(score))
        if finite.size == 0:
            continue
        best = finite[np.argsort(-score[finite], kind="stable")[:n_best]]
        st, j = best // span, best % span
        out.append((np.full(best.size, row), st, st + j, s[st], e[st + j]))
    if not out:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, np.zeros(0), np.zeros(0)
    return tuple(np.concatenate(parts) for parts in zip(*out))


def postprocess_predictions(examples: Any, features: Any, start_logits: Any, end_logits: Any, n_best: int = 20,
                            max_answer_length: int = 30, version_2: bool = False,
                            null_threshold: float = 0.0) -> QAPredictions:
    """Turn per-window start/end logits into answers per example.

    Args:
        examples: The flat SQuAD examples (datasets.Dataset, dict of lists or list of dicts) with id and context.
        features: What `prepare_eval_features` produced for them (datasets.Dataset, dict of lists or list of
            dicts) with example_id and offset_mapping (None outside the context); optional cls_index.
        start_logits: [n_features, seq_len] array (rows may be padded past a window's length with -inf or any
            large negative value; padding is ignored through offset_mapping), or a list of 1-D rows.
        end_logits: Same shape as start_logits.
        n_best: Start/end logits paired per window, and entries kept in each n-best list.
        max_answer_length: Longest answer in tokens.
        version_2: SQuAD 2.0: predict "" when null_score - best_span_score > null_threshold, and list the
            no-answer entry in the n-best.
        null_threshold: See version_2 (tune it on dev with `find_best_threshold`).

    Returns:
        QAPredictions (predictions, nbest, null_scores, best_scores, span_predictions).
    """
    if n_best < 1 or max_answer_length < 1:
        raise LongctxError(f"n_best ({n_best}) and max_answer_length ({max_answer_length}) must be at least 1")
    ids = [str(i) for i in _column(examples, "id", "examples")]
    contexts = _column(examples, "context", "examples")
    feature_ids = _column(features, "example_id", "features")
    n_features = len(feature_ids)
    slot = {qid: i for i, qid in enumerate(ids)}
    if len(slot) != len(ids):
        raise LongctxError("examples: question ids are not unique")
    try:
        feature_example = np.fromiter((slot[str(q)] for q in feature_ids), dtype=np.int64, count=n_features)
    except KeyError as e:
        raise LongctxError(f"features: example_id {e.args[0]} is not among the examples") from None
    counts = np.bincount(feature_example, minlength=len(ids))
    if len(ids) and counts.min() == 0:
        raise LongctxError(f"examples: {ids[int(np.argmin(counts))]}: no feature (were the features built from "
                           "these examples?)")
    start = _logit_matrix(start_logits, n_features, "start_logits")
    end = _logit_matrix(end_logits, n_features, "end_logits")
    if start.shape != end.shape:
        raise LongctxError(f"start_logits {list(start.shape)} and end_logits {list(end.shape)} differ in shape")
    width = start.shape[1]
    rows, char_starts, char_ends = _offsets(features)
    lengths = np.diff(rows)
    cls = np.zeros(n_features, dtype=np.int64)
    if _has_field(features, "cls_index"):
        cls = np.asarray(_column(features, "cls_index", "features"), dtype=np.int64)

    # no-answer score per window (raw logits at CLS), min over the windows of each example
    null = start[np.arange(n_features), cls].astype(np.float64) + end[np.arange(n_features), cls]
    order = np.lexsort((null, feature_example))
    first = np.searchsorted(feature_example[order], np.arange(len(ids)))
    null_feature = order[first] if n_features else np.zeros(0, dtype=np.int64)

    # candidate spans of every window, in blocks of windows
    parts = []
    for lo in range(0, n_features, _CHUNK):
        hi = min(lo + _CHUNK, n_features)
        valid = _valid_mask(rows[lo:hi], lengths[lo:hi], char_starts, width)
        found = _window_candidates(start[lo:hi], end[lo:hi], valid, n_best, max_answer_length)
        parts.append((found[0] + lo, *found[1:]))
    cand = [np.concatenate(p) for p in zip(*parts)] if parts else [np.zeros(0, dtype=np.int64)] * 3 + [np.zeros(0)] * 2
    missing = np.setdiff1d(np.arange(len(ids)), feature_example[cand[0]])
    if missing.size:  # rare: no pairing of top starts and ends was a valid span
        windows = np.flatnonzero(np.isin(feature_example, missing))
        valid = _valid_mask(rows[windows], lengths[windows], char_starts, width)
        found = _band_candidates(start[windows], end[windows], valid, n_best, max_answer_length)
        cand = [np.concatenate([c, f]) for c, f in zip(cand, (windows[found[0]], *found[1:]))]
    f_idx, s_tok, e_tok, s_logit, e_logit = cand
    c_start = char_starts[rows[f_idx] + s_tok]
    c_end = char_ends[rows[f_idx] + e_tok]
    ex = feature_example[f_idx]
    score = s_logit + e_logit
    nonempty = c_end > c_start
    ex, c_start, c_end, s_logit, e_logit, score = (a[nonempty] for a in (ex, c_start, c_end, s_logit, e_logit, score))

    # one entry per character span (overlapping windows see the same span), best score first per example
    order = np.lexsort((-score, c_end, c_start, ex))
    keep = np.ones(order.size, dtype=bool)
    if order.size:
        keep[1:] = ~((np.diff(ex[order]) == 0) & (np.diff(c_start[order]) == 0) & (np.diff(c_end[order]) == 0))
    order = order[keep]
    order = order[np.lexsort((-score[order], ex[order]))]
    group_start = np.searchsorted(ex[order], np.arange(len(ids) + 1))
    rank = np.arange(order.size) - group_start[ex[order]]
    order = order[rank < n_best]
    ex, c_start, c_end, s_logit, e_logit, score = (a[order] for a in (ex, c_start, c_end, s_logit, e_logit, score))
    group_start = np.searchsorted(ex, np.arange(len(ids) + 1))
    has_span = group_start[1:] > group_start[:-1]
    best = np.full(len(ids), -np.inf)
    best[has_span] = score[group_start[:-1][has_span]]
    null_min = null[null_feature]

    # softmax over each n-best list (with the no-answer entry for SQuAD 2.0)
    top = np.maximum(best, null_min) if version_2 else np.where(has_span, best, 0.0)
    weight = np.exp(score - top[ex])
    null_weight = np.exp(null_min - top) if version_2 else np.zeros(len(ids))
    total = np.bincount(ex, weights=weight, minlength=len(ids)) + null_weight
    prob = (weight / total[ex]).tolist()
    null_prob = (null_weight / total).tolist()
    # where the no-answer entry goes in each list: after the spans that score at least as much
    null_rank = np.bincount(ex, weights=score >= null_min[ex], minlength=len(ids)).astype(np.int64).tolist()

    null_diff = (null_min - best).tolist()
    null_start = start[null_feature, cls[null_feature]].astype(np.float64).tolist()
    null_end = end[null_feature, cls[null_feature]].astype(np.float64).tolist()
    cs, ce, sl, el = (a.tolist() for a in (c_start, c_end, s_logit, e_logit))
    bounds = group_start.tolist()
    best_list = best.tolist()
    predictions: dict[str, str] = {}
    nbest: dict[str, list[dict[str, Any]]] = {}
    null_scores: dict[str, float] = {}
    best_scores: dict[str, float] = {}
    spans: dict[str, str] = {}
    for i, qid in enumerate(ids):
        context = contexts[i]
        lo, hi = bounds[i], bounds[i + 1]
        n = len(context)
        for j in range(lo, hi):
            # uncased BERT tokenizers drop combining marks (Thai vowels, Arabic tanween), so a word's last token
            # can end before them: they belong to the answer
            while ce[j] < n and context[ce[j]] >= "\u0300" and unicodedata.category(context[ce[j]])[0] == "M":
                ce[j] += 1
        entries = [{"text": context[cs[j]:ce[j]], "probability": prob[j], "start_logit": sl[j],
                    "end_logit": el[j], "start": cs[j], "end": ce[j]} for j in range(lo, hi)]
        span_text = entries[0]["text"] if entries else ""
        null_scores[qid] = null_diff[i]
        best_scores[qid] = best_list[i]
        spans[qid] = span_text
        if version_2:
            entries.insert(null_rank[i], {"text": "", "probability": null_prob[i], "start_logit": null_start[i],
                                          "end_logit": null_end[i], "start": None, "end": None})
            predictions[qid] = "" if null_diff[i] > null_threshold else span_text
        else:
            predictions[qid] = span_text
        nbest[qid] = entries
    if _has_field(examples, "question_id"):
        question_ids = [str(q) for q in _column(examples, "question_id", "examples")]
        for question, text in _question_predictions(ids, question_ids, spans, best_list).items():
            predictions.setdefault(question, text)
    return QAPredictions(predictions=predictions, nbest=nbest, null_scores=null_scores, best_scores=best_scores,
                         span_predictions=spans, version_2=version_2)


def _question_predictions(ids: list[str], question_ids: list[str], spans: dict[str, str],
                          best: list[float]) -> dict[str, str]:
    """{question id: best span text over its documents}: the highest span score (start + end logit) wins.

    The official TriviaQA metric scores a Wikipedia question by the prediction keyed with its QuestionId
    alone; choosing that answer is the reader's job, so it is done here from the scores, where the
    metric cannot (its opt-in best-document fallback instead peeks at the gold answers)."""
    chosen: dict[str, tuple[float, str]] = {}
    for qid, question, score in zip(ids, question_ids, best):
        if question not in chosen or score > chosen[question][0]:
            chosen[question] = (score, spans[qid])
    return {question: text for question, (_, text) in chosen.items()}


def _has_field(data: Any, name: str) -> bool:
    if hasattr(data, "column_names"):
        return name in data.column_names
    if isinstance(data, dict):
        return name in data
    return bool(data) and name in data[0]


def _valid_mask(row_starts: np.ndarray, lengths: np.ndarray, char_starts: np.ndarray, width: int) -> np.ndarray:
    """[windows, width] bool: token t of the window exists, has logits and lies in the context."""
    positions = np.arange(width)
    inside = positions[None, :] < lengths[:, None]
    index = np.where(inside, row_starts[:, None] + positions[None, :], 0)
    if char_starts.size == 0:
        return np.zeros_like(inside)
    return inside & (char_starts[index] >= 0)


def find_best_threshold(examples: Any, null_scores: dict[str, float], predictions_with_spans: dict[str, str],
                        metric: str = "f1") -> tuple[float, float]:
    """The SQuAD 2.0 null threshold that maximises `metric` on these examples (evaluate-v2.0.py's
    find_best_thresh, through `longctx.qa.metrics.squad_v2`).

    Args:
        examples: Flat SQuAD 2.0 examples (id, answers; no gold text = unanswerable).
        null_scores: {qid: score_null - best_span_score} (`QAPredictions.null_scores`).
        predictions_with_spans: {qid: best span text, ignoring the null score} (`QAPredictions.span_predictions`;
            `QAPredictions.nbest` works too: its best non-empty text is used).
        metric: "f1" or "exact".

    Returns:
        (threshold, score in percent): predicting "" where null_score > threshold scores that much. As in the
        official script, the threshold is 0.0 when answering nothing is best.
    """
    from longctx.qa.metrics import squad_v2

    if metric not in ("f1", "exact"):
        raise LongctxError(f"metric must be 'f1' or 'exact', got {metric!r}")
    ids = [str(i) for i in _column(examples, "id", "examples")]
    answers = _column(examples, "answers", "examples")
    if _has_field(examples, "is_impossible"):
        impossible = _column(examples, "is_impossible", "examples")
        answers = [{"text": [], "answer_start": []} if imp else ans for ans, imp in zip(answers, impossible)]
    unscored = next((qid for qid in ids if qid not in null_scores), None)
    if unscored is not None:
        raise LongctxError(f"null_scores: question {unscored}: no null score")
    spans = {qid: _best_span_text(value) for qid, value in predictions_with_spans.items()}
    gold = [{"id": qid, "answers": ans} for qid, ans in zip(ids, answers)]
    result = squad_v2(gold, spans, na_probs=null_scores)
    return float(result[f"best_{metric}_thresh"]), float(result[f"best_{metric}"])


def _best_span_text(value: str | list[dict[str, Any]]) -> str:
    """A span text, or the best non-empty text of an n-best list (`QAPredictions.nbest` values)."""
    if isinstance(value, str):
        return value
    return next((entry["text"] for entry in value if entry["text"]), "")


def write_predictions(out_dir: str | Path, preds: QAPredictions) -> dict[str, Path]:
    """Write predictions.json ({qid: text}, the official format), nbest_predictions.json and, for SQuAD 2.0,
    null_odds.json ({qid: null score}, the official na_prob file), each atomically. Returns their paths."""
    out_dir = Path(out_dir)
    paths = {"predictions": write_json(out_dir / "predictions.json", preds.predictions),
             "nbest": write_json(out_dir / "nbest_predictions.json", preds.nbest)}
    if preds.version_2:
        paths["null_odds"] = write_json(out_dir / "null_odds.json", preds.null_scores)
    return paths
