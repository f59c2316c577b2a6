"""Decoding QA logits: spans across windows, limits, SQuAD 2.0 null scores and threshold, output files."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from longctx.common import LongctxError
from longctx.testing import corpus, train_tokenizer
from longctx.qa.decode import QAPredictions, find_best_threshold, postprocess_predictions, write_predictions
from longctx.qa.features import prepare_eval_features

KW = dict(max_length=40, doc_stride=10)


@pytest.fixture(scope="module")
def bert():
    return train_tokenizer("bert", corpus() + ["東京 and Kyōto, café"])


@pytest.fixture(scope="module")
def roberta():
    return train_tokenizer("roberta", corpus() + ["東京 and Kyōto, café"])


def context_text(n: int = 6, seed: int = 3) -> str:
    return " ".join(corpus(n, seed=seed)) + " The river flows north, and the sea lies west."


def make(tokenizer, contexts: list[str], **kw):
    rows = [{"id": f"q{i}", "title": "t", "context": c, "question": "Where is it?",
             "answers": {"text": [], "answer_start": []}, "is_impossible": True} for i, c in enumerate(contexts)]
    examples = {k: [r[k] for r in rows] for k in rows[0]}
    features = prepare_eval_features(examples, tokenizer, **{**KW, **kw})
    return rows, features


def noise(features, seed: int = 0, scale: float = 0.1):
    rng = np.random.default_rng(seed)
    width = max(len(ids) for ids in features["input_ids"])
    shape = (len(features["input_ids"]), width)
    start, end = rng.normal(0, scale, shape), rng.normal(0, scale, shape)
    for i, ids in enumerate(features["input_ids"]):  # padding past each window, as the Trainer pads batches
        start[i, len(ids):] = end[i, len(ids):] = -100.0
    return start, end


def token_at(offsets, char: int, first: bool = True) -> int:
    """The token of the window starting (first=True) or ending at `char`."""
    for t, o in enumerate(offsets):
        if o is not None and (o[0] == char if first else o[1] == char):
            return t
    raise AssertionError(f"no token {'starts' if first else 'ends'} at {char}")


def brute_force(contexts, features, start, end, max_answer_length):
    """{qid: (score, text)} of the best span over every window and every valid pair."""
    best = {}
    for w, offsets in enumerate(features["offset_mapping"]):
        qid = features["example_id"][w]
        context = contexts[int(qid[1:])]
        inside = [t for t, o in enumerate(offsets) if o is not None]
        for s in inside:
            for e in inside:
                if s <= e < s + max_answer_length:
                    score = start[w, s] + end[w, e]
                    if qid not in best or score > best[qid][0]:
                        best[qid] = (score, context[offsets[s][0]:offsets[e][1]])
    return best


def test_best_span_in_second_window(bert):
    context = context_text()
    rows, features = make(bert, [context])
    windows = [w for w, q in enumerate(features["example_id"]) if q == "q0"]
    assert len(windows) >= 3
    first_end = max(o[1] for o in features["offset_mapping"][0] if o is not None)
    match = next(m for m in re.finditer(r"\w+ \w+", context) if m.start() > first_end)
    start, end = noise(features)
    w1 = next(w for w in windows if features["offset_mapping"][w] and any(
        o and o[0] == match.start() for o in features["offset_mapping"][w]))
    offsets = features["offset_mapping"][w1]
    start[w1, token_at(offsets, match.start())] = 6.0
    end[w1, token_at(offsets, match.end(), first=False)] = 6.0
    weaker = next(m for m in re.finditer(r"\w+", context) if m.end() < first_end - 20)
    start[0, token_at(features["offset_mapping"][0], weaker.start())] = 4.0
    end[0, token_at(features["offset_mapping"][0], weaker.end(), first=False)] = 4.0

    preds = postprocess_predictions(rows, features, start, end)
    assert preds.predictions["q0"] == match.group()
    nbest = preds.nbest["q0"]
    assert nbest[0]["text"] == match.group() and (nbest[0]["start"], nbest[0]["end"]) == match.span()
    assert any(entry["text"] == weaker.group() for entry in nbest)  # candidates of every window
    assert len(nbest) == 20
    assert abs(sum(entry["probability"] for entry in nbest) - 1) < 1e-9
    assert [e["probability"] for e in nbest] == sorted((e["probability"] for e in nbest), reverse=True)
    assert preds.best_scores["q0"] == pytest.approx(start[w1].max() + end[w1].max())
    for entry in nbest:
        assert context[entry["start"]:entry["end"]] == entry["text"]
        assert set(entry) == {"text", "probability", "start_logit", "end_logit", "start", "end"}
    # the same span seen by two overlapping windows is listed once
    assert len({(e["start"], e["end"]) for e in nbest}) == len(nbest)


@pytest.mark.parametrize("max_answer_length", [1, 4, 30])
def test_agrees_with_exhaustive_search(bert, max_answer_length):
    contexts = [context_text(4, seed=s) for s in range(4)] + ["Short one."]
    rows, features = make(bert, contexts)
    start, end = noise(features, seed=max_answer_length, scale=1.0)
    expected = brute_force(contexts, features, start, end, max_answer_length)
    preds = postprocess_predictions(rows, features, start, end, n_best=64, max_answer_length=max_answer_length)
    for qid, (score, text) in expected.items():
        assert preds.predictions[qid] == text
        assert preds.best_scores[qid] == pytest.approx(score)
    if max_answer_length == 30:
        # pairing the 20 best starts with the 20 best ends (the BERT reference) finds them too for the usual
        # limit; with very short limits it can miss spans (all top ends more than the limit past the top starts)
        default = postprocess_predictions(rows, features, start, end, max_answer_length=max_answer_length)
        assert default.predictions == preds.predictions


def test_max_answer_length_in_tokens(bert):
    context = "Ada met Boris in the old city of Paris near the river in 1990."
    rows, features = make(bert, [context], max_length=64)
    offsets = features["offset_mapping"][0]
    start, end = noise(features)
    s = token_at(offsets, context.index("old"))
    e = token_at(offsets, context.index("Paris") + 5, first=False)
    start[0, s] = end[0, e] = 10.0
    n_tokens = e - s + 1
    assert postprocess_predictions(rows, features, start, end, max_answer_length=n_tokens).predictions["q0"] == \
        "old city of Paris"
    short = postprocess_predictions(rows, features, start, end, max_answer_length=n_tokens - 1)
    assert short.predictions["q0"] != "old city of Paris"
    for entry in short.nbest["q0"]:
        tokens = [t for t, o in enumerate(offsets) if o is not None and entry["start"] <= o[0] and o[1] <= entry["end"]]
        assert len(tokens) <= n_tokens - 1


def test_spans_outside_context_never_chosen(bert):
    context = context_text(3)
    rows, features = make(bert, [context])
    start, end = noise(features)
    for w, offsets in enumerate(features["offset_mapping"]):
        for t, o in enumerate(offsets):
            if o is None:  # CLS, question, SEP
                start[w, t] = end[w, t] = 50.0
        start[w, len(offsets):] = end[w, len(offsets):] = 80.0  # padding that is not even very negative
    preds = postprocess_predictions(rows, features, start, end)
    assert preds.predictions["q0"]
    for entry in preds.nbest["q0"]:
        assert entry["start"] is not None and context[entry["start"]:entry["end"]] == entry["text"]
    assert preds.null_scores["q0"] > 0  # CLS scores 100, spans ~0


def test_padded_and_ragged_logits(bert):
    contexts = [context_text(3, seed=s) for s in range(3)]
    rows, features = make(bert, contexts)
    start, end = noise(features, scale=1.0)
    plain = postprocess_predictions(rows, features, start, end)
    wide_s = np.full((start.shape[0], start.shape[1] + 24), -np.inf)
    wide_e = wide_s.copy()
    wide_s[:, :start.shape[1]], wide_e[:, :end.shape[1]] = start, end
    wide = postprocess_predictions(rows, features, wide_s.astype(np.float32), wide_e.astype(np.float32))
    lengths = [len(ids) for ids in features["input_ids"]]
    ragged = postprocess_predictions(rows, features, [start[i, :n] for i, n in enumerate(lengths)],
                                     [end[i, :n] for i, n in enumerate(lengths)])
    for other in (wide, ragged):
        assert other.predictions == plain.predictions
        assert other.best_scores == pytest.approx(plain.best_scores)


def test_unanswerable_with_threshold(bert):
    context = context_text(3)
    rows, features = make(bert, [context])
    windows = [w for w, q in enumerate(features["example_id"]) if q == "q0"]
    assert len(windows) >= 2
    start, end = noise(features, scale=0.01)
    start[:, 0] = end[:, 0] = 3.0
    start[windows[1], 0], end[windows[1], 0] = 1.0, 0.5  # the minimum over windows: 1.5
    m = re.search(r"river", context)
    w = windows[-1]
    start[w, token_at(features["offset_mapping"][w], m.start())] = 0.5
    end[w, token_at(features["offset_mapping"][w], m.end(), first=False)] = 0.5  # best span ~1.0

    v1 = postprocess_predictions(rows, features, start, end)
    assert v1.predictions["q0"] == "river" and all(e["text"] for e in v1.nbest["q0"])
    v2 = postprocess_predictions(rows, features, start, end, version_2=True)
    diff = v2.null_scores["q0"]
    assert diff == pytest.approx(1.5 - v2.best_scores["q0"]) and diff == pytest.approx(0.5, abs=0.05)
    assert v2.predictions["q0"] == "" and v2.span_predictions["q0"] == "river"
    null = [e for e in v2.nbest["q0"] if e["text"] == ""]
    assert len(null) == 1 and null[0]["start"] is None
    assert (null[0]["start_logit"], null[0]["end_logit"]) == (1.0, 0.5)
    assert v2.nbest["q0"][0] is null[0]  # it scores best
    assert abs(sum(e["probability"] for e in v2.nbest["q0"]) - 1) < 1e-9
    assert postprocess_predictions(rows, features, start, end, version_2=True,
                                   null_threshold=diff + 0.01).predictions["q0"] == "river"


def test_find_best_threshold():
    examples = [
        {"id": "a", "answers": {"text": ["Paris"], "answer_start": [0]}, "is_impossible": False},
        {"id": "b", "answers": {"text": ["x y"], "answer_start": [0]}, "is_impossible": False},
        {"id": "c", "answers": {"text": [], "answer_start": []}, "is_impossible": True},
        {"id": "d", "answers": {"text": [], "answer_start": []}, "is_impossible": True},
    ]
    spans = {"a": "Paris", "b": "wrong", "c": "foo", "d": "bar"}
    nulls = {"a": -2.0, "b": -1.0, "c": 0.5, "d": 3.0}
    # answering only "a" (null <= -2) gets a, c and d right: 3 of 4
    assert find_best_threshold(examples, nulls, spans) == (-2.0, 75.0)
    assert find_best_threshold(examples, nulls, {**spans, "b": "x"}, metric="exact") == (-2.0, 75.0)
    threshold, f1 = find_best_threshold(examples, nulls, {**spans, "b": "x"})  # F1 2/3 for b
    assert threshold == -1.0 and f1 == pytest.approx(100 * (3 + 2 / 3) / 4)
    nbest = {qid: [{"text": ""}, {"text": text}, {"text": "other"}] for qid, text in spans.items()}
    assert find_best_threshold(examples, nulls, nbest) == (-2.0, 75.0)  # n-best lists: best non-empty text
    with pytest.raises(LongctxError, match="metric"):
        find_best_threshold(examples, nulls, spans, metric="em")
    with pytest.raises(LongctxError, match="question d"):
        find_best_threshold(examples, {k: v for k, v in nulls.items() if k != "d"}, spans)


def test_write_predictions(tmp_path, bert):
    rows, features = make(bert, [context_text(2), "Ada lives in Paris."])
    start, end = noise(features, scale=1.0)
    v1 = postprocess_predictions(rows, features, start, end)
    paths = write_predictions(tmp_path / "v1", v1)
    assert sorted(p.name for p in (tmp_path / "v1").iterdir()) == ["nbest_predictions.json", "predictions.json"]
    assert json.loads(paths["predictions"].read_text()) == v1.predictions
    assert json.loads(paths["nbest"].read_text())["q1"][0]["text"] == v1.predictions["q1"]
    v2 = postprocess_predictions(rows, features, start, end, version_2=True)
    write_predictions(tmp_path / "v2", v2)
    assert json.loads((tmp_path / "v2" / "null_odds.json").read_text()) == pytest.approx(v2.null_scores)
    assert isinstance(v1, QAPredictions)


def test_dataset_inputs_with_indices(bert):
    import datasets

    contexts = [context_text(3, seed=s) for s in range(3)]
    rows, features = make(bert, contexts)
    start, end = noise(features, scale=1.0)
    plain = postprocess_predictions(rows, features, start, end)
    order = np.random.default_rng(1).permutation(len(features["input_ids"]))
    shuffled = datasets.Dataset.from_dict(features).select(order.tolist())  # an indices mapping
    examples = datasets.Dataset.from_list(rows).select([2, 0, 1])
    got = postprocess_predictions(examples, shuffled, start[order], end[order])
    assert got.predictions == plain.predictions
    assert got.nbest == plain.nbest
    as_list = [dict(zip(features, values)) for values in zip(*features.values())]
    assert postprocess_predictions(rows, as_list, start, end).predictions == plain.predictions


@pytest.mark.parametrize("answer", ["東京", "Kyōto", "café"])
def test_unicode_spans(roberta, answer):
    context = "Trains run between 東京 and Kyōto, said the café owner."
    rows, features = make(roberta, [context], max_length=64)
    offsets = features["offset_mapping"][0]
    begin, finish = context.index(answer), context.index(answer) + len(answer)
    start, end = noise(features)
    s = min(t for t, o in enumerate(offsets) if o and o[0] <= begin < o[1])
    e = max(t for t, o in enumerate(offsets) if o and o[0] < finish <= o[1])
    start[0, s] = end[0, e] = 10.0
    assert postprocess_predictions(rows, features, start, end).predictions["q0"] == answer


def test_mismatched_inputs_are_one_line_errors(bert):
    rows, features = make(bert, [context_text(2), "Ada lives in Paris."])
    start, end = noise(features)
    with pytest.raises(LongctxError, match="not among the examples"):
        postprocess_predictions(rows[:1], features, start, end)
    with pytest.raises(LongctxError, match="q9: no feature"):
        postprocess_predictions(rows + [{**rows[1], "id": "q9"}], features, start, end)
    with pytest.raises(LongctxError, match="start_logits"):
        postprocess_predictions(rows, features, start[:-1], end)


@pytest.mark.parametrize("answer", ["ลูกศิษย์", "مربّعاً", "café"])
def test_answers_ending_in_combining_marks(minilm_dir, answer):
    """Uncased BERT drops combining marks, so the last token ends before them: labels and decoding keep them."""
    from transformers import AutoTokenizer

    from longctx.qa.features import prepare_train_features

    tok = AutoTokenizer.from_pretrained(minilm_dir)
    context = f"Some words first and then {answer}"
    rows = [{"id": "q0", "title": "t", "context": context, "question": "Which?", "is_impossible": False,
             "answers": {"text": [answer], "answer_start": [context.index(answer)]}}]
    examples = {k: [r[k] for r in rows] for k in rows[0]}
    train = prepare_train_features(examples, tok)
    features = prepare_eval_features(examples, tok)
    assert train["start_positions"][0] > 0
    start, end = noise(features)
    start[0, train["start_positions"][0]] = end[0, train["end_positions"][0]] = 10.0
    assert postprocess_predictions(rows, features, start, end).predictions["q0"] == answer


def test_offsets_with_gaps_read_alike_from_lists_and_datasets(bert):
    import datasets

    rows, features = make(bert, [context_text(3, seed=s) for s in range(2)])
    for offsets in features["offset_mapping"]:  # a token inside the context marked as not scorable
        inside = [t for t, o in enumerate(offsets) if o is not None]
        offsets[inside[len(inside) // 2]] = None
    start, end = noise(features, scale=1.0)
    from_lists = postprocess_predictions(rows, features, start, end, n_best=64)
    from_arrow = postprocess_predictions(rows, datasets.Dataset.from_dict(features), start, end, n_best=64)
    assert from_lists.nbest == from_arrow.nbest
    gaps = {(w, t) for w, offsets in enumerate(features["offset_mapping"]) for t, o in enumerate(offsets)
            if o is None and 0 < t < len(offsets) - 1 and offsets[t - 1] is not None and offsets[t + 1] is not None}
    assert len(gaps) == len(features["offset_mapping"])
    for qid, entries in from_lists.nbest.items():
        context = rows[int(qid[1:])]["context"]
        assert all(context[e["start"]:e["end"]] == e["text"] for e in entries)


def test_tuned_threshold_reproduces_its_score(bert):
    from longctx.qa.metrics import squad_v2

    rows, features = make(bert, [context_text(2, seed=s) for s in range(6)])
    start, end = noise(features, scale=1.0)
    windows = np.asarray([int(q[1:]) for q in features["example_id"]])
    start[:, 0] = end[:, 0] = np.where(windows < 3, -1.0, 3.0)  # q0-q2 look answerable, q3-q5 do not
    first = postprocess_predictions(rows, features, start, end, version_2=True)
    for i, row in enumerate(rows):  # gold: q0-q2 their best span, q3 another text, q4-q5 unanswerable
        text = first.span_predictions[row["id"]] if i < 3 else "zzz" if i == 3 else None
        row["answers"] = {"text": [text] if text else [], "answer_start": [0] if text else []}
        row["is_impossible"] = text is None
    threshold, best_f1 = find_best_threshold(rows, first.null_scores, first.span_predictions)
    assert best_f1 == pytest.approx(500 / 6)  # all but q3 (its gold text is never predicted)
    tuned = postprocess_predictions(rows, features, start, end, version_2=True, null_threshold=threshold)
    assert [tuned.predictions[r["id"]] != "" for r in rows] == [True, True, True, False, False, False]
    assert squad_v2(rows, tuned.predictions)["f1"] == best_f1


def test_question_id_records_also_answer_per_question(bert):
    """TriviaQA records (one per question and document, `question_id` set) also give each question the answer of
    its best-scoring document: the official metric reads Wikipedia predictions by QuestionId only."""
    contexts = ["The river flows north.", "The sea lies west of the hills.", "Stone bridges cross the river."]
    rows, features = make(bert, contexts)
    for row, question in zip(rows, ["Q1", "Q1", "Q2"]):
        row["question_id"] = question
    start, end = noise(features, scale=0.01)
    for w, qid in enumerate(features["example_id"]):  # a clear span per document; document q1 scores highest
        offsets = features["offset_mapping"][w]
        context = contexts[int(qid[1:])]
        word = {"q0": "river", "q1": "west", "q2": "bridges"}[qid]
        at = context.index(word)
        start[w, token_at(offsets, at)] = end[w, token_at(offsets, at + len(word), first=False)] = (
            {"q0": 5.0, "q1": 8.0, "q2": 3.0}[qid])
    preds = postprocess_predictions(rows, features, start, end)
    assert preds.predictions == {"q0": "river", "q1": "west", "q2": "bridges", "Q1": "west", "Q2": "bridges"}
    assert set(preds.nbest) == {"q0", "q1", "q2"}  # per-record outputs stay per record
    for row in rows:
        del row["question_id"]
    assert set(postprocess_predictions(rows, features, start, end).predictions) == {"q0", "q1", "q2"}
