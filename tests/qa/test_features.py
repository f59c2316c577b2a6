"""QA windows: equality with tokenizer(...), labels at window edges, unicode offsets, global attention, collator."""
from __future__ import annotations

import contextlib
import json
import logging
import re
import unicodedata
from collections import Counter

import pytest

from longctx.common import LongctxError
from longctx.testing import corpus, train_tokenizer
from longctx.qa.features import (QACollator, default_max_question_tokens, prepare_eval_features,
                                 prepare_train_features)

FAMILIES = ("bert", "roberta", "xlm-roberta")
UNICODE = ["Le café naïve über die straße", "東京 and Kyōto are cities", "Zoë met José in São Paulo in 1990s"]


@pytest.fixture(scope="module")
def tokenizers():
    return {family: train_tokenizer(family, corpus() + UNICODE) for family in FAMILIES}


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir)


def columns(rows: list[dict]) -> dict[str, list]:
    return {key: [row[key] for row in rows] for key in rows[0]}


def example(context: str, answer: str | None, question: str = "Where did it happen?", qid: str = "q0",
            occurrence: int = 0, start: int | None = None) -> dict:
    if answer is None:
        answers = {"text": [], "answer_start": []}
    else:
        if start is None:
            start = [m.start() for m in re.finditer(re.escape(answer), context)][occurrence]
        answers = {"text": [answer], "answer_start": [start]}
    return {"id": qid, "title": "t", "context": context, "question": question, "answers": answers,
            "is_impossible": answer is None}


def long_context(n: int = 12, seed: int = 1) -> str:
    """Generated sentences, then one with the words the tests ask about."""
    return " ".join(corpus(n, seed=seed)) + " The river flows north, and the sea lies west."


@contextlib.contextmanager
def warnings_logged():
    """Messages logged at WARNING by longctx.qa.features (its logger may not propagate to pytest's caplog)."""
    messages: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    logger = logging.getLogger("longctx.qa.features")
    handler = Keep(level=logging.WARNING)
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


def window_ranges(eval_features: dict) -> list[tuple[int, int]]:
    """[first context char, last context char) of every window."""
    ranges = []
    for offsets in eval_features["offset_mapping"]:
        inside = [o for o in offsets if o is not None]
        ranges.append((inside[0][0], inside[-1][1]))
    return ranges


@pytest.mark.parametrize("family", FAMILIES + ("minilm",))
@pytest.mark.parametrize("side", ["right", "left"])
def test_windows_equal_tokenizer_call(family, side, tokenizers, request):
    tok = request.getfixturevalue("minilm") if family == "minilm" else tokenizers[family]
    tok.padding_side = side
    try:
        rows = [example(long_context(n, seed=n), None, question=q, qid=str(n))
                for n, q in zip(range(1, 8), ["  Who?", "What river was built in the north of Paris?", "x",
                                              "Which album?", "Where?", "When was it?", "Why not?"])]
        rows.append(example(UNICODE[1] + " " + long_context(3), None, question="東京?", qid="u"))
        ours = prepare_eval_features(columns(rows), tok, max_length=48, doc_stride=12)
        questions = [r["question"].lstrip() for r in rows]
        contexts = [r["context"] for r in rows]
        pair = (contexts, questions) if side == "left" else (questions, contexts)
        ref = tok(*pair, truncation="only_first" if side == "left" else "only_second", max_length=48, stride=12,
                  return_overflowing_tokens=True, return_offsets_mapping=True)
        assert len(ref["input_ids"]) > len(rows)  # several windows per example
        assert ours["input_ids"] == ref["input_ids"]
        assert ours["attention_mask"] == ref["attention_mask"]
        assert ("token_type_ids" in ours) == (family in ("bert", "minilm"))
        if "token_type_ids" in ours:
            assert ours["token_type_ids"] == ref["token_type_ids"]
        context_seq = 0 if side == "left" else 1
        for i, offsets in enumerate(ours["offset_mapping"]):
            expected = [o if s == context_seq else None for o, s in zip(ref["offset_mapping"][i], ref.sequence_ids(i))]
            assert offsets == expected
        assert ours["example_id"] == [rows[j]["id"] for j in ref["overflow_to_sample_mapping"]]
    finally:
        tok.padding_side = "right"


def test_backend_settings_restored(minilm):
    backend = minilm.backend_tokenizer
    before = (backend.truncation, backend.padding)
    prepare_train_features(columns([example(long_context(), "river", occurrence=0)]), minilm, max_length=64,
                           doc_stride=16)
    assert (backend.truncation, backend.padding) == before


@pytest.mark.parametrize("family", FAMILIES)
def test_labels_at_window_edges(family, tokenizers):
    """Every word span: labelled exactly in the windows that hold it entirely, and mapped back to its text."""
    tok = tokenizers[family]
    context = long_context(6)
    words = [(m.start(), m.end()) for m in re.finditer(r"\S+", context)]
    spans = [(words[i][0], words[j][1]) for i in range(len(words)) for j in (i, i + 1) if j < len(words)]
    rows = [example(context, context[s:e], qid=f"q{n}", start=s) for n, (s, e) in enumerate(spans)]
    kw = dict(max_length=40, doc_stride=10)
    train = prepare_train_features(columns(rows), tok, **kw)
    evals = prepare_eval_features(columns(rows), tok, **kw)
    ranges = window_ranges(evals)
    per_example = Counter()
    straddles = 0
    qids = [r["id"] for r in rows]
    for w, (s, e) in enumerate(zip(train["start_positions"], train["end_positions"])):
        answer_start, answer_end = spans[qids.index(evals["example_id"][w])]
        lo, hi = ranges[w]
        inside = lo <= answer_start and answer_end <= hi
        if inside:
            offsets = evals["offset_mapping"][w]
            assert 0 < s <= e
            assert context[offsets[s][0]:offsets[e][1]] == context[answer_start:answer_end]
            per_example[evals["example_id"][w]] += 1
        else:
            assert s == e == 0
            straddles += lo < answer_end and answer_start < hi  # partly inside this window: CLS
    n_windows = len(set(ranges))
    assert n_windows >= 4
    assert straddles > 0
    # every span short enough to fit in the overlap of two windows is labelled somewhere
    for n, (s, e) in enumerate(spans):
        if len(tok(context[s:e], add_special_tokens=False)["input_ids"]) <= kw["doc_stride"]:
            assert per_example[f"q{n}"] >= 1, context[s:e]


def test_answer_across_window_boundary_labelled_by_next_window(minilm):
    context = long_context(5)
    kw = dict(max_length=48, doc_stride=12)
    probe = prepare_eval_features(columns([example(context, None)]), minilm, **kw)
    (lo0, hi0), (lo1, hi1) = window_ranges(probe)[:2]
    # the last word of window 0 together with the word after it
    words = [(m.start(), m.end()) for m in re.finditer(r"\w+", context)]
    k = max(i for i, (s, e) in enumerate(words) if e <= hi0)
    start, end = words[k][0], words[k + 1][1]
    assert start >= lo1 and end > hi0
    row = example(context, context[start:end], start=start)
    train = prepare_train_features(columns([row]), minilm, **kw)
    evals = prepare_eval_features(columns([row]), minilm, **kw)
    assert (train["start_positions"][0], train["end_positions"][0]) == (0, 0)
    s, e = train["start_positions"][1], train["end_positions"][1]
    offsets = evals["offset_mapping"][1]
    assert context[offsets[s][0]:offsets[e][1]] == context[start:end]


def test_unanswerable_and_first_answer(minilm):
    context = "The river flows north through Paris and then west to the sea."
    two = {"text": ["the sea", "Paris"], "answer_start": [context.index("the sea"), context.index("Paris")]}
    rows = [example(context, None, qid="none"),
            {**example(context, "Paris", qid="impossible"), "is_impossible": True},
            {**example(context, "Paris", qid="two"), "answers": two},
            example(context, " Paris ", qid="spaces", start=context.index("Paris") - 1)]
    train = prepare_train_features(columns(rows), minilm)
    evals = prepare_eval_features(columns(rows), minilm)
    assert train["start_positions"][:2] == [0, 0] and train["end_positions"][:2] == [0, 0]
    offsets = evals["offset_mapping"][2]
    assert context[offsets[train["start_positions"][2]][0]:offsets[train["end_positions"][2]][1]] == "the sea"
    offsets = evals["offset_mapping"][3]  # surrounding whitespace is not part of the span
    assert context[offsets[train["start_positions"][3]][0]:offsets[train["end_positions"][3]][1]] == "Paris"


def test_misplaced_answers_realigned_or_left_out(minilm):
    context = "The river flows north. Later the river flows west."
    rows = [example(context, "river", start=3, qid="off-by-one"),    # moved to 4, the nearest "river"
            example(context, "river", start=40, qid="second"),       # moved to the second "river" (32)
            example(context, "lake", start=4, qid="absent"),         # not in the context: no windows
            example(context, "flows", qid="fine")]
    with warnings_logged() as records:
        train = prepare_train_features(columns(rows), minilm)
    assert len(train["input_ids"]) == 3
    evals = prepare_eval_features(columns([rows[0], rows[1], rows[3]]), minilm)
    got = [context[evals["offset_mapping"][w][s][0]:evals["offset_mapping"][w][e][1]]
           for w, (s, e) in enumerate(zip(train["start_positions"], train["end_positions"]))]
    assert got == ["river", "river", "flows"]
    assert evals["offset_mapping"][1][train["start_positions"][1]][0] == context.rindex("river")
    assert records == ["of 4 examples, 2 answers not at their answer_start were moved to the nearest occurrence of "
                       "their text and 1 examples were left out (answer text blank or not in the context) "
                       "(first left out: absent)"]
    with pytest.raises(LongctxError, match="missing column 'answers'"):
        prepare_train_features({"question": ["q"], "context": ["c"]}, minilm)


@pytest.mark.parametrize("family", FAMILIES + ("minilm",))
@pytest.mark.parametrize("answer", ["naïve", "straße", "東京", "São Paulo", "Zoë", "Kyōto"])
def test_unicode_offsets(family, answer, tokenizers, request):
    tok = request.getfixturevalue("minilm") if family == "minilm" else tokenizers[family]
    context = " ".join(UNICODE) + " " + long_context(2)
    row = example(context, answer)
    train = prepare_train_features(columns([row]), tok, max_length=64, doc_stride=16)
    evals = prepare_eval_features(columns([row]), tok, max_length=64, doc_stride=16)
    found = []
    for w, (s, e) in enumerate(zip(train["start_positions"], train["end_positions"])):
        if s:
            offsets = evals["offset_mapping"][w]
            found.append(context[offsets[s][0]:offsets[e][1]])
            # the label starts at the first token of the answer's first character (byte-level BPE splits
            # one character into several tokens with equal offsets)
            assert offsets[s - 1] is None or offsets[s - 1][1] <= offsets[s][0] or offsets[s - 1][0] < offsets[s][0]
    assert found and all(text == answer for text in found), (family, found)


def test_token_type_ids_and_global_attention(minilm, tokenizers):
    rows = [example(long_context(4), "river", question="Which river is in the north?", occurrence=0)]
    for tok in (minilm, tokenizers["roberta"]):
        for prepare in (prepare_train_features, prepare_eval_features):
            out = prepare(columns(rows), tok, max_length=48, doc_stride=12, global_attention=True)
            ref = tok(rows[0]["question"], rows[0]["context"], truncation="only_second", max_length=48, stride=12,
                      return_overflowing_tokens=True)
            assert len(out["input_ids"]) == len(ref["input_ids"]) > 1
            for w, mask in enumerate(out["global_attention_mask"]):
                expected = [int(s == 0) for s in ref.sequence_ids(w)]
                expected[0] = 1  # CLS
                assert mask == expected
                assert len(mask) == len(out["input_ids"][w])
            if tok is minilm:
                for w, types in enumerate(out["token_type_ids"]):
                    sep = out["input_ids"][w].index(minilm.sep_token_id)
                    assert types == [0] * (sep + 1) + [1] * (len(types) - sep - 1)
            else:
                assert "token_type_ids" not in out
    plain = prepare_train_features(columns(rows), minilm, max_length=48, doc_stride=12)
    assert "global_attention_mask" not in plain


def test_long_question_truncated_with_one_warning(minilm):
    long_q = "why is the river " * 40
    rows = [example(long_context(3), "river", question=long_q, qid=f"long{i}", occurrence=0) for i in range(3)]
    rows.append(example(long_context(3), "river", question="Which river?", qid="short", occurrence=0))
    with warnings_logged() as records:
        out = prepare_train_features(columns(rows), minilm, max_length=64, doc_stride=16)
        evals = prepare_eval_features(columns(rows), minilm, max_length=64, doc_stride=16)
    assert len(records) == 2  # one per call, not one per question
    assert records[0].startswith("3 of 4 questions are longer than 32 tokens") and "long0" in records[0]
    max_q = default_max_question_tokens(minilm, 64, 16)
    assert max_q == 32
    for ids in out["input_ids"]:
        assert ids.index(minilm.sep_token_id) - 1 <= max_q
        assert len(ids) <= 64
    assert set(evals["example_id"]) == {"long0", "long1", "long2", "short"}
    labelled = [s for s, qid in zip(out["start_positions"], evals["example_id"]) if s]
    assert labelled


def test_bad_window_arguments(minilm):
    rows = columns([example("The river.", "river")])
    with pytest.raises(LongctxError, match="doc_stride"):
        prepare_train_features(rows, minilm, max_length=64, doc_stride=61)
    with pytest.raises(LongctxError, match="max_question_tokens"):
        prepare_train_features(rows, minilm, max_length=64, doc_stride=16, max_question_tokens=60)
    assert prepare_train_features(rows, minilm, max_length=64, doc_stride=16, max_question_tokens=44)["input_ids"]


def test_dataset_map_and_collator(minilm, tokenizers):
    import datasets
    import torch

    rows = [example(long_context(n, seed=n), "the", qid=f"q{n}", occurrence=0) for n in range(1, 6)]
    ds = datasets.Dataset.from_list(rows)
    train = ds.map(prepare_train_features, batched=True, remove_columns=ds.column_names,
                   fn_kwargs=dict(tokenizer=minilm, max_length=48, doc_stride=12, global_attention=True))
    evals = ds.map(prepare_eval_features, batched=True, remove_columns=ds.column_names,
                   fn_kwargs=dict(tokenizer=minilm, max_length=48, doc_stride=12, global_attention=True))
    assert len(train) == len(evals) > len(ds)
    assert evals[0]["offset_mapping"][0] is None and evals[0]["example_id"] == "q1"

    collate = QACollator(minilm)
    features = [train[i] for i in range(len(train) - 3, len(train))]
    batch = collate(features)
    longest = max(len(f["input_ids"]) for f in features)
    width = -(-longest // 8) * 8
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "global_attention_mask",
                          "start_positions", "end_positions"}
    for key in ("input_ids", "attention_mask", "token_type_ids", "global_attention_mask"):
        assert batch[key].shape == (3, width) and batch[key].dtype == torch.long
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        assert batch["input_ids"][i, :n].tolist() == f["input_ids"]
        assert (batch["input_ids"][i, n:] == minilm.pad_token_id).all()
        assert (batch["attention_mask"][i, n:] == 0).all() and (batch["global_attention_mask"][i, n:] == 0).all()
        assert batch["global_attention_mask"][i, :n].tolist() == f["global_attention_mask"]
    assert batch["start_positions"].tolist() == [f["start_positions"] for f in features]

    eval_batch = QACollator(minilm, pad_to_multiple_of=None)([evals[0], evals[1]])
    assert "offset_mapping" not in eval_batch and "example_id" not in eval_batch
    assert eval_batch["input_ids"].shape[1] == max(len(evals[0]["input_ids"]), len(evals[1]["input_ids"]))

    roberta = tokenizers["roberta"]
    roberta.padding_side = "left"
    try:
        b = QACollator(roberta)([{"input_ids": [0, 5, 2], "attention_mask": [1, 1, 1]}, {"input_ids": [0, 2],
                                                                                        "attention_mask": [1, 1]}])
    finally:
        roberta.padding_side = "right"
    assert b["input_ids"].tolist()[1] == [1] * 6 + [0, 2] and b["attention_mask"].tolist()[1] == [0] * 6 + [1, 1]


def _squad_rows(path) -> list[dict]:
    data = json.loads(path.read_text(encoding="utf-8"))
    rows = []
    for article in data["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                rows.append({"id": qa["id"], "title": article["title"], "context": paragraph["context"],
                             "question": qa["question"], "is_impossible": False,
                             "answers": {"text": [a["text"] for a in qa["answers"]],
                                         "answer_start": [a["answer_start"] for a in qa["answers"]]}})
    return rows


@pytest.mark.shared
def test_squad_dev_labels_recover_gold(shared_file, minilm):
    """Every training window of SQuAD 1.1 dev maps back through its offsets to the first gold answer.

    Allowed: the gold boundary falls inside a token ("Japan" -> token "japanese", "1990" -> "1990s",
    "20,427" -> "£20,427"), so the recovered text is the gold plus the rest of those tokens; trailing
    combining marks that the uncased tokenizer drops (none in SQuAD; decoding adds them back). Windows
    that do not hold the whole answer label CLS."""
    rows = _squad_rows(shared_file("squad-v1.1/dev-v1.1.json"))
    examples = columns(rows)
    train = prepare_train_features(examples, minilm, max_length=384, doc_stride=128)
    evals = prepare_eval_features(examples, minilm, max_length=384, doc_stride=128)
    by_id = {r["id"]: r for r in rows}
    counts: Counter = Counter()
    labelled = set()
    unexplained = []
    for w, (s, e) in enumerate(zip(train["start_positions"], train["end_positions"])):
        row = by_id[evals["example_id"][w]]
        if s == 0:
            counts["cls (answer not entirely in the window)"] += 1
            continue
        labelled.add(row["id"])
        context, gold = row["context"], row["answers"]["text"][0]
        gold_start = row["answers"]["answer_start"][0]
        offsets = evals["offset_mapping"][w]
        lo, hi = offsets[s][0], offsets[e][1]
        got = context[lo:hi]
        if got == gold:
            counts["exact"] += 1
        elif got == gold.strip():
            counts["gold has surrounding whitespace"] += 1
        elif got == gold.rstrip("".join(ch for ch in gold if unicodedata.category(ch)[0] == "M")):
            counts["trailing combining marks dropped by the uncased tokenizer"] += 1
        elif lo <= gold_start and gold_start + len(gold) <= hi and not any(
                ch.isspace() for ch in context[lo:gold_start] + context[gold_start + len(gold):hi]):
            counts["gold boundary inside a token"] += 1
        else:
            counts["unexplained"] += 1
            unexplained.append((row["id"], gold, got))
    print("\nSQuAD dev label recovery (MiniLM, 384/128):", dict(counts), f"windows={len(train['input_ids'])}")
    assert not unexplained, unexplained[:10]
    assert len(labelled) == len(rows)  # every answer lies entirely in at least one window
    assert counts["gold boundary inside a token"] <= 50


def test_collated_batch_runs_through_longformer_qa(minilm):
    """BERT-style inputs (2 separators) need the explicit global_attention_mask: Longformer's own guess
    expects RoBERTa's 3 separators."""
    import torch
    from transformers import LongformerConfig, LongformerForQuestionAnswering

    rows = [example(long_context(n, seed=n), "river", qid=f"q{n}", occurrence=0) for n in (1, 2)]
    features = prepare_train_features(columns(rows), minilm, max_length=64, doc_stride=16, global_attention=True)
    keep = ("input_ids", "attention_mask", "token_type_ids", "global_attention_mask", "start_positions",
            "end_positions")
    batch = QACollator(minilm)([{k: features[k][i] for k in keep} for i in range(len(features["input_ids"]))])
    torch.manual_seed(0)
    config = LongformerConfig(vocab_size=len(minilm), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                              intermediate_size=64, attention_window=[16], max_position_embeddings=130,
                              type_vocab_size=2, pad_token_id=minilm.pad_token_id, sep_token_id=minilm.sep_token_id)
    model = LongformerForQuestionAnswering(config).eval()
    with torch.no_grad():
        out = model(**batch)
    assert torch.isfinite(out.loss)
    assert out.start_logits.shape == batch["input_ids"].shape
