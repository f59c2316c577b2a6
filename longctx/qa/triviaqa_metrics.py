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

By default nothing else is scored, so the numbers equal the official script's on every input
(`longctx.qa.decode` adds a `QuestionId` prediction, the best-scoring answer over the question's
documents, to predictions made document by document). Two fallbacks for other prediction files are
an explicit option (`fallback=True`, `longctx score --triviaqa-fallback`); they change the score, and
the result then carries `"fallback": true` and per-domain counts of where they applied:
- Wikipedia: a question without a `QuestionId` prediction but with predictions for its documents
  is scored by its **best document** (the highest EM and F1 over those documents, each maximised
  separately): an upper bound on picking one answer per question.
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


def _score_domain(qa_files: list[dict], domain: str, predictions: dict[str, str],
                  fallback: bool) -> tuple[list, dict, int]:
    """Per-unit (em, f1, had_prediction) in the official order, the domain block's extra fields, and how many
    units had no official-key prediction but one the fallback would use (for a hint when it is off)."""
    units: list[tuple[bool, float, bool]] = []
    used = 0  # units scored through the fallback (fallback on) or that it would have scored (off)
    if domain == "Wikipedia":
        # The official unit: one per QuestionId (a repeated id keeps its last answer, as the script's dict does).
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
                used += bool(candidates)
                if not fallback:
                    candidates = []
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
                used += 1
                if fallback:
                    prediction = predictions[qid]
            if prediction is None:
                units.append((False, 0.0, False))
                continue
            truths = ground_truths(answer)
            units.append((exact_match_score(prediction, truths), f1_score(prediction, truths), True))
    extra: dict[str, Any] = {"unit": "question" if domain == "Wikipedia" else "question-document pair"}
    if fallback:
        extra["scored_by_best_document" if domain == "Wikipedia" else "pairs_from_question_key"] = used
    return units, extra, used


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
                      source: str = "TriviaQA data", fallback: bool = False) -> dict[str, Any]:
    """Score `predictions` against one or more official-layout TriviaQA dicts (as `read_qa_json` returns).

    Args:
        dataset_json: an official qa/*.json object ({"Data": [...], "Domain": "Wikipedia"|"Web", ...})
            or a list of them (pooled overall, reported per domain).
        predictions: answer strings keyed `QuestionId` (Wikipedia) or `QuestionId--Filename` (Web), as the
            official script reads them.
        source: how to name the data in error messages.
        fallback: also score Wikipedia questions by their best document prediction and Web pairs by
            their question's prediction (see the module docstring); not the official metric.

    Returns:
        {"exact_match", "f1", "common", "denominator", "pred_len", "gold_len", "domains": {domain: block}},
        EM/F1 in percent; with one data file and `fallback` off the first six equal the official script's
        output. With `fallback`, also "fallback": True and per-domain counts of the units it scored.
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
    unused: dict[str, int] = {}
    for domain, group in by_domain.items():
        units, extra, used = _score_domain(group, domain, predictions, fallback)
        all_units += units
        domains[domain] = {**_block(units), **extra}
        unused[domain] = 0 if fallback else used
    if not all_units:
        raise LongctxError(f"{source}: no questions to score")
    result = {**_block(all_units), "pred_len": len(predictions), "gold_len": len(all_units), "domains": domains}
    if fallback:
        result["fallback"] = True
        log.warning("TriviaQA fallbacks on: Wikipedia questions without a QuestionId prediction are scored by "
                    "their best document, Web pairs without their own prediction by the question's; "
                    "these scores are not the official metric's")
    missing = result["denominator"] - result["common"]
    if missing:
        log.warning(f"{missing} of {result['denominator']} scored units have no prediction and score 0")
    if unused.get("Wikipedia"):
        log.warning(f"Wikipedia: {unused['Wikipedia']} question(s) have predictions keyed QuestionId--Filename "
                    f"only; the official metric reads QuestionId keys and scores them 0 "
                    f"(--triviaqa-fallback scores their best document instead)")
    if unused.get("Web"):
        log.warning(f"Web: {unused['Web']} (question, document) pair(s) have only a QuestionId prediction; the "
                    f"official metric reads QuestionId--Filename keys and scores them 0 "
                    f"(--triviaqa-fallback uses the question's prediction instead)")
    return result
