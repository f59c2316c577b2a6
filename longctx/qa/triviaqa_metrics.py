"""The official TriviaQA metric: normalised exact match and F1 against the answer's alias list.

Mirrors the official evaluation (mandarjoshi90/triviaqa, evaluation/triviaqa_evaluation.py, v1.0):
- answers are normalised by lower-casing, turning `_` and punctuation (plus ‘ ’ ´ `) into spaces,
  dropping the articles a/an/the and collapsing white space (`longctx.data.triviaqa_answers`, shared with
  the reader's answer spans);
- the ground truths of a question are its `NormalizedAliases` plus its normalised `HumanAnswers`;
  a prediction scores the best EM / F1 over them;
- the unit scored depends on the file's Domain, as in the official script: **Wikipedia** files score
  one answer per question (key `QuestionId`), **Web** files one answer per (question, document)
  pair (key `QuestionId--Filename`, over EntityPages and SearchResults). A unit with no prediction
  scores 0 and still counts in the denominator; `common` counts the units that had one.
- `VerifiedEval` files keep only the verified questions (and, for Web, the verified documents).

Two additions for predictions made document by document (our readers emit one record per
(question, document) pair, id `QuestionId--Filename`):
- Wikipedia: a question without a `QuestionId` prediction but with predictions for its documents
  is scored by its **best document** (the highest EM and F1 over those documents). This is an
  upper bound on picking one answer per question; the result says how many questions it applied to.
- Web: a pair without its own prediction uses the question's `QuestionId` prediction, if any.
Several data files (e.g. wikipedia-dev.json and web-dev.json) are pooled into the overall
numbers and also reported per domain.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

from longctx.common import LongctxError, log
from longctx.data.triviaqa import check_qa_json
from longctx.data.triviaqa_answers import ground_truths, normalize_answer


def _f1(prediction_tokens: list[str], truth_tokens: list[str]) -> float:
    same = sum((Counter(prediction_tokens) & Counter(truth_tokens)).values())
    if same == 0:
        return 0.0
    precision = same / len(prediction_tokens)
    recall = same / len(truth_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match_score(prediction: str, truths: Iterable[str]) -> bool:
    """Whether the normalised prediction equals any normalised ground truth."""
    pred = normalize_answer(prediction)
    return any(pred == normalize_answer(t) for t in truths)


def f1_score(prediction: str, truths: Iterable[str]) -> float:
    """The best token-overlap F1 (0..1) of the normalised prediction against any ground truth."""
    pred = normalize_answer(prediction).split()
    return max((_f1(pred, normalize_answer(t).split()) for t in truths), default=0.0)


def _doc_key(qid: str, filename: str) -> str:
    return f"{qid}--{filename}"


def _score_domain(qa_files: list[dict], domain: str, predictions: dict[str, str]) -> tuple[list, dict]:
    """Per-unit (em, f1, had_prediction) in the official order, plus counters for the domain block."""
    units: list[tuple[bool, float, bool]] = []
    best_document = from_question_key = 0
    if domain == "Wikipedia":
        questions: dict[str, tuple[dict, list[str]]] = {}
        for qa in qa_files:
            for datum in qa["Data"]:
                pages = datum.get("EntityPages", []) + datum.get("SearchResults", [])
                questions[datum["QuestionId"]] = (datum["Answer"], [p["Filename"] for p in pages])
        for qid, (answer, filenames) in questions.items():
            truths = ground_truths(answer)
            if qid in predictions:
                candidates = [predictions[qid]]
            else:
                candidates = [predictions[k] for k in dict.fromkeys(_doc_key(qid, f) for f in filenames)
                              if k in predictions]
                best_document += len(candidates) > 1
            if not candidates:
                units.append((False, 0.0, False))
                continue
            units.append((max(exact_match_score(c, truths) for c in candidates),
                          max(f1_score(c, truths) for c in candidates), True))
    else:
        pairs: dict[str, tuple[dict, str]] = {}
        for qa in qa_files:
            for datum in qa["Data"]:
                for page in datum.get("EntityPages", []) + datum.get("SearchResults", []):
                    pairs[_doc_key(datum["QuestionId"], page["Filename"])] = (datum["Answer"], datum["QuestionId"])
        for key, (answer, qid) in pairs.items():
            prediction = predictions.get(key)
            if prediction is None and qid in predictions:
                prediction = predictions[qid]
                from_question_key += 1
            if prediction is None:
                units.append((False, 0.0, False))
                continue
            truths = ground_truths(answer)
            units.append((exact_match_score(prediction, truths), f1_score(prediction, truths), True))
    extra = {"unit": "question" if domain == "Wikipedia" else "question-document pair"}
    if domain == "Wikipedia":
        extra["scored_by_best_document"] = best_document
    else:
        extra["pairs_from_question_key"] = from_question_key
    return units, extra


def _block(units: list[tuple[bool, float, bool]]) -> dict[str, Any]:
    # Summed in the official order (booleans for EM, floats for F1) so the numbers match it exactly.
    em = f1 = common = 0
    for unit_em, unit_f1, had in units:
        em += unit_em
        f1 += unit_f1
        common += had
    n = len(units)
    return {"exact_match": 100.0 * em / n if n else 0.0, "f1": 100.0 * f1 / n if n else 0.0,
            "common": common, "denominator": n}


def evaluate_triviaqa(dataset_json: dict | list[dict], predictions: dict[str, str], *,
                      source: str = "TriviaQA data") -> dict[str, Any]:
    """Score `predictions` against one or more official-layout TriviaQA dicts (as `read_qa_json` returns).

    Args:
        dataset_json: an official qa/*.json object ({"Data": [...], "Domain": "Wikipedia"|"Web", ...})
            or a list of them (pooled overall, reported per domain).
        predictions: answer strings keyed `QuestionId` or `QuestionId--Filename`.
        source: how to name the data in error messages.

    Returns:
        {"exact_match", "f1", "common", "denominator", "pred_len", "gold_len", "domains": {domain: block}},
        EM/F1 in percent; with one data file the first six equal the official script's output.
    """
    qa_files = dataset_json if isinstance(dataset_json, list) else [dataset_json]
    if not qa_files:
        raise LongctxError(f"{source}: no TriviaQA data to score against")
    for qa in qa_files:
        check_qa_json(qa, qa.get("_source", source) if isinstance(qa, dict) else source, need_answers=True)
    by_domain: dict[str, list[dict]] = {}
    for qa in qa_files:
        by_domain.setdefault(qa["Domain"], []).append(qa)
    all_units: list = []
    domains: dict[str, dict] = {}
    for domain, group in by_domain.items():
        units, extra = _score_domain(group, domain, predictions)
        all_units += units
        domains[domain] = {**_block(units), **extra}
    if not all_units:
        raise LongctxError(f"{source}: no questions to score")
    result = {**_block(all_units), "pred_len": len(predictions), "gold_len": len(all_units), "domains": domains}
    missing = result["denominator"] - result["common"]
    if missing:
        log.warning(f"{missing} of {result['denominator']} scored units have no prediction and score 0")
    best = domains.get("Wikipedia", {}).get("scored_by_best_document", 0)
    if best:
        log.info(f"Wikipedia: {best} question(s) had predictions for several documents and were scored by "
                 f"their best document (an upper bound on choosing one answer per question)")
    return result
