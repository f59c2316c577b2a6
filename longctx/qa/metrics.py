"""SQuAD exact match and F1, equal to the official evaluate-v1.1.py / evaluate-v2.0.py scripts.

`lang=None` is the official SQuAD normalisation (ASCII punctuation, English articles). Any `lang`
(including "en") follows MLQA's mlqa_evaluation_v1.py instead: Unicode punctuation, that language's
articles, and character-level tokens for Chinese. Scores sum in dataset order with the scripts'
arithmetic, so results are equal to theirs bit for bit (bench/official_metrics_check.py checks this).

Missing predictions score 0 and are counted in every total, with a warning. evaluate-v1.1.py does the
same; evaluate-v2.0.py instead leaves them out of `total` (and crashes computing HasAns), so here v2
figures differ from it only when predictions are missing.
"""
from __future__ import annotations

import functools
import json
import math
import re
import string
import sys
import unicodedata
from collections import Counter, OrderedDict
from typing import Literal, Mapping

from longctx.common import LongctxError, log, read_json

Format = Literal["squad", "triviaqa", "tydiqa"]

_SQUAD_PUNCT = str.maketrans("", "", string.punctuation)
_SQUAD_ARTICLES = re.compile(r"\b(a|an|the)\b")

# Article patterns of mlqa_evaluation_v1.py (None: the language has no articles to drop).
# Arabic removes every "ال", not only the prefix: MLQA's pattern '\sال^|ال' reduces to that.
_MLQA_ARTICLES: dict[str, str | None] = {
    "en": r"\b(a|an|the)\b",
    "es": r"\b(un|una|unos|unas|el|la|los|las)\b",
    "de": r"\b(ein|eine|einen|einem|eines|einer|der|die|das|den|dem|des)\b",
    "vi": r"\b(của|là|cái|chiếc|những)\b",
    "ar": r"ال",
    "hi": None,
    "zh": None,
}
_CJK = re.compile(r"([\u4e00-\u9fa5])")


@functools.cache
def _unicode_punct() -> dict[int, None]:
    """Deletion table for every Unicode punctuation (category P*) character plus string.punctuation."""
    table = {i: None for i in range(sys.maxunicode) if unicodedata.category(chr(i)).startswith("P")}
    table.update({ord(c): None for c in string.punctuation})
    return table


@functools.cache
def _articles(lang: str) -> re.Pattern | None:
    if lang not in _MLQA_ARTICLES:
        raise LongctxError(f"unknown answer language '{lang}' (MLQA normalisation knows "
                           f"{', '.join(_MLQA_ARTICLES)}; leave lang unset for SQuAD normalisation)")
    pattern = _MLQA_ARTICLES[lang]
    return re.compile(pattern) if pattern else None


def normalize_answer(s: str, lang: str | None = None) -> str:
    """Lower-case, drop punctuation and articles, and rejoin the tokens with single spaces.

    lang=None: SQuAD's rules. lang given: MLQA's rules for that language (zh: one token per CJK character).
    """
    if lang is None:
        return " ".join(_SQUAD_ARTICLES.sub(" ", s.lower().translate(_SQUAD_PUNCT)).split())
    articles = _articles(lang)
    text = s.lower().translate(_unicode_punct())
    if articles is not None:
        text = articles.sub(" ", text)
    if lang == "zh":
        return " ".join(tok for piece in _CJK.split(text) for tok in piece.split())
    return " ".join(text.split())


def _f1(pred: list[str], gold: list[str], empty_match: bool) -> float:
    """Token F1. v2 (`empty_match`) scores 1 when both are empty; v1 scores 0 when nothing is shared."""
    if empty_match and (not pred or not gold):
        return int(pred == gold)
    num_same = sum((Counter(pred) & Counter(gold)).values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(pred)
    recall = 1.0 * num_same / len(gold)
    return (2 * precision * recall) / (precision + recall)


def _warn_missing(missing: list[str], total: int) -> None:
    if missing:
        log.warning(f"{len(missing)} of {total} questions have no prediction and score 0 "
                    f"(first: {', '.join(missing[:5])})")


def squad_v1(examples: list[dict], predictions: Mapping[str, str], *, lang: str | None = None) -> dict:
    """{"exact_match", "f1"} in percent, as evaluate-v1.1.py (or MLQA's script when `lang` is given).

    The best score over the gold answers counts; a question with no gold answer scores 0."""
    if not examples:
        raise LongctxError("no questions to score")
    exact_match = f1 = 0
    missing = []
    for ex in examples:
        if ex["id"] not in predictions:
            missing.append(ex["id"])
            continue
        pred = normalize_answer(predictions[ex["id"]], lang)
        golds = [normalize_answer(text, lang) for text in ex["answers"]["text"]]
        exact_match += max((pred == gold for gold in golds), default=False)
        pred_tokens = pred.split()
        f1 += max((_f1(pred_tokens, gold.split(), empty_match=False) for gold in golds), default=0)
    _warn_missing(missing, len(examples))
    return {"exact_match": 100.0 * exact_match / len(examples), "f1": 100.0 * f1 / len(examples)}


def squad_v2(examples: list[dict], predictions: Mapping[str, str], na_probs: Mapping[str, float] | None = None,
             na_prob_thresh: float = 1.0, *, lang: str | None = None) -> OrderedDict:
    """The figures evaluate-v2.0.py prints: exact, f1, total, HasAns_*, NoAns_* (for non-empty subsets)
    and, given `na_probs` ({qid: P(no answer)}), best_exact/best_f1 with their thresholds.

    Gold answers that normalise to "" are dropped; an unanswerable question's only gold is "". A
    prediction whose `na_probs` exceeds `na_prob_thresh` counts as "no answer"."""
    if not examples:
        raise LongctxError("no questions to score")
    has_ans: dict[str, bool] = {}
    exact: dict[str, float] = {}
    f1: dict[str, float] = {}
    missing = []
    for ex in examples:
        qid = ex["id"]
        has_ans[qid] = bool(ex["answers"]["text"])
        if qid not in predictions:
            missing.append(qid)
            exact[qid] = f1[qid] = 0
            continue
        golds = [g for g in (normalize_answer(t, lang) for t in ex["answers"]["text"]) if g] or [""]
        pred = normalize_answer(predictions[qid], lang)
        pred_tokens = pred.split()
        exact[qid] = max(int(gold == pred) for gold in golds)
        f1[qid] = max(_f1(pred_tokens, gold.split(), empty_match=True) for gold in golds)
    _warn_missing(missing, len(examples))
    answered = [qid for qid in exact if qid in predictions]
    if na_probs is not None:
        unscored = next((qid for qid in answered if qid not in na_probs), None)
        if unscored is not None:
            raise LongctxError(f"no-answer probabilities: no entry for question {unscored}")

    def thresholded(scores: dict[str, float]) -> dict[str, float]:
        if na_probs is None:
            return scores
        return {qid: float(not has_ans[qid]) if qid in predictions and na_probs[qid] > na_prob_thresh else s
                for qid, s in scores.items()}

    exact_t, f1_t = thresholded(exact), thresholded(f1)
    result: OrderedDict = OrderedDict()
    for prefix, qids in (("", list(exact)), ("HasAns_", [q for q, h in has_ans.items() if h]),
                         ("NoAns_", [q for q, h in has_ans.items() if not h])):
        if qids:
            result[f"{prefix}exact"] = 100.0 * sum(exact_t[q] for q in qids) / len(qids)
            result[f"{prefix}f1"] = 100.0 * sum(f1_t[q] for q in qids) / len(qids)
            result[f"{prefix}total"] = len(qids)
    if na_probs is not None:
        for name, scores in (("exact", exact), ("f1", f1)):
            result[f"best_{name}"], result[f"best_{name}_thresh"] = _best_thresh(
                scores, predictions, na_probs, has_ans, set(missing))
    return result


def _best_thresh(scores: dict[str, float], predictions: Mapping[str, str], na_probs: Mapping[str, float],
                 has_ans: dict[str, bool], missing: set[str]) -> tuple[float, float]:
    """Best score over no-answer thresholds: start with every question answered "no answer", then let
    questions through in increasing na_prob order (evaluate-v2.0.py's find_best_thresh). A question
    without a prediction scores 0 whatever the threshold."""
    current = sum(1 for qid, h in has_ans.items() if not h and qid not in missing)
    best, best_thresh = current, 0.0
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):
        if qid not in scores or qid in missing:
            continue
        if has_ans[qid]:
            current += scores[qid]
        elif predictions[qid]:  # the raw string, as the official script tests it
            current -= 1
        if current > best:
            best, best_thresh = current, na_probs[qid]
    return 100.0 * best / len(scores), best_thresh


def _read_str_map(path: str, what: str, kind: type | tuple[type, ...], kind_name: str) -> dict:
    obj = read_json(path, what)
    if not isinstance(obj, dict):
        raise LongctxError(f"{path}: {what} must be a JSON object mapping question id to {kind_name}")
    for qid, value in obj.items():
        # NaN and infinities (JSON extensions Python reads) would make every threshold comparison false.
        if not isinstance(value, kind) or isinstance(value, bool) or (
                isinstance(value, float) and not math.isfinite(value)):
            raise LongctxError(f"{path}: question {qid}: {what} value must be {kind_name}, "
                               f"got {value if isinstance(value, float) else type(value).__name__}")
    return obj


def read_predictions(path: str) -> dict[str, str]:
    """A predictions file: one JSON object {question id (or QuestionId--Filename): answer text}."""
    return _read_str_map(path, "predictions", str, "a string")


GOLDP_NO_LANG = ("lang and na_probs do not apply to TyDi QA GoldP: each language is scored with SQuAD 1.1's "
                 "normalisation, as its official evaluation does")


def check_lang(source: str, examples: list[dict], version: str | None, lang: str | None) -> None:
    """`lang` (MLQA's normalisation) on data that compute_metrics would refuse it for: raised when the data is
    read, before any model work, naming the file (TyDi QA GoldP scores each language itself)."""
    from longctx.data import tydiqa
    from longctx.data.squad import is_squad_v2

    if lang and not is_squad_v2(version, examples) and tydiqa.is_goldp(examples):
        raise LongctxError(f"{source}: TyDi QA GoldP data: lang does not apply: each language is scored with "
                           f"SQuAD 1.1's normalisation, as its official evaluation does")


def compute_metrics(predictions: Mapping[str, str], *, format: Format = "squad", examples: list[dict] | None = None,
                    version: str | None = None, lang: str | None = None,
                    na_probs: Mapping[str, float] | None = None, triviaqa_gold: str | None = None,
                    triviaqa_fallback: bool = False) -> dict:
    """The one metric chooser: the official metric for the data's format, version and answer language.

    - format "triviaqa": the official TriviaQA metric (aliases, per domain) against `triviaqa_gold`, the
      original qa file(s) (comma-separated are pooled) or hub name: the flat (question, document) records
      cannot be scored on their own. `triviaqa_fallback` turns on the fallbacks of
      `longctx.qa.triviaqa_metrics` (not the official metric; the result then says "fallback": true).
    - format "squad": SQuAD 2.0 figures when `longctx.data.squad.is_squad_v2(version, examples)`, else
      SQuAD 1.1's; `lang` switches to MLQA's normalisation for that language. `na_probs` (SQuAD 2.0 only)
      adds best_exact/best_f1.
    - format "tydiqa", or SQuAD 1.1 data whose ids all start with a TyDi QA GoldP language
      (`longctx.data.tydiqa.is_goldp`): SQuAD 1.1 per language, EM/F1 the mean over the languages
      without English, plus the overall figures (`longctx.data.tydiqa.goldp_summary`).
    """
    if format == "triviaqa":
        if lang or na_probs is not None:
            raise LongctxError("lang and na_probs apply to SQuAD-format data, not TriviaQA")
        if not triviaqa_gold:
            raise LongctxError("TriviaQA scoring needs the original qa file or hub name")
        from longctx.data.triviaqa import load_qa_data
        from longctx.qa.triviaqa_metrics import evaluate_triviaqa

        gold = [qa for part in triviaqa_gold.split(",") if part.strip()
                for qa in load_qa_data(part.strip(), need_answers=True, for_scoring=True)]
        return evaluate_triviaqa(gold, dict(predictions), source=triviaqa_gold, fallback=triviaqa_fallback)
    if triviaqa_fallback:
        raise LongctxError("triviaqa_fallback applies to TriviaQA data (format triviaqa) only")
    if format not in ("squad", "tydiqa"):
        raise LongctxError(f"unknown data format {format!r} (expected squad, triviaqa or tydiqa)")
    from longctx.data import tydiqa
    from longctx.data.squad import is_squad_v2

    if examples is None:
        raise LongctxError("SQuAD scoring needs the gold examples")
    if format == "tydiqa" or (not is_squad_v2(version, examples) and tydiqa.is_goldp(examples)):
        if lang or na_probs is not None:
            raise LongctxError(GOLDP_NO_LANG)
        groups = tydiqa.by_language(examples)
        return tydiqa.goldp_summary(squad_v1(examples, predictions),
                                    {g: squad_v1(qs, predictions) for g, qs in groups.items()},
                                    {g: len(qs) for g, qs in groups.items()})
    if is_squad_v2(version, examples):
        return dict(squad_v2(examples, predictions, na_probs, lang=lang))
    if na_probs is not None:
        raise LongctxError("no-answer probabilities need SQuAD 2.0 data")
    return squad_v1(examples, predictions, lang=lang)


def score_line(where: str, metrics: dict) -> str:
    """One line of a run's scores: EM/F1, and HasAns/NoAns EM/F1 for SQuAD 2.0."""
    em = metrics.get("exact_match", metrics.get("exact"))
    parts = [f"{where}: EM {em:.2f}  F1 {metrics['f1']:.2f}"]
    for subset in ("HasAns", "NoAns"):
        if f"{subset}_f1" in metrics:
            parts.append(f"{subset} EM {metrics[f'{subset}_exact']:.2f}  F1 {metrics[f'{subset}_f1']:.2f}")
    return "  |  ".join(parts) + f"  ({metrics.get('eval_examples', metrics.get('total', '?'))} questions)"


def score(*, data: str, predictions: str, lang: str | None = None, na_probs: str | None = None,
          format: Format = "squad", triviaqa_fallback: bool = False) -> dict:
    """Score predictions as the official SQuAD (or TriviaQA) scripts do and print their JSON.

    SQuAD 2.0 metrics are used when the file's version is 2.x or any question is impossible;
    otherwise SQuAD 1.1 metrics.

    Args:
        data: gold data: a SQuAD-layout JSON file or a hub name (see load_squad); for triviaqa, official
            qa JSON file(s) (several comma-separated are pooled) or a hub name like trivia_qa/rc.wikipedia[:split].
        predictions: JSON object {question id: predicted answer text}.
        lang: answer language for MLQA-style normalisation (en, es, de, ar, hi, vi, zh);
            unset: official SQuAD normalisation.
        na_probs: SQuAD 2.0 only: JSON object {question id: probability of no answer}, which adds
            best_exact/best_f1 and their thresholds.
        format: gold data format: squad (SQuAD/XQuAD/MLQA layout; TyDi QA GoldP ids are recognised), tydiqa
            (TyDi QA GoldP: per language, EM/F1 averaged without English) or triviaqa (official qa JSON,
            scored with the official TriviaQA metric per domain).
        triviaqa_fallback: TriviaQA only, not the official metric: score a Wikipedia question without a
            QuestionId prediction by its best QuestionId--Filename prediction, and a Web pair without its
            own prediction by its question's QuestionId prediction (the output then says "fallback": true).

    Example:
        longctx score --data dev-v2.0.json --predictions runs/squad2/predictions.json
    """
    from longctx.data.squad import is_squad_v2, load_squad

    if format == "triviaqa":
        if lang or na_probs:
            raise LongctxError("--lang and --na-probs apply to SQuAD-format data, not TriviaQA")
        result = compute_metrics(read_predictions(predictions), format="triviaqa", triviaqa_gold=data,
                                 triviaqa_fallback=triviaqa_fallback)
        print(json.dumps(result, indent=2))
        return result

    if triviaqa_fallback:
        raise LongctxError("--triviaqa-fallback applies to --format triviaqa only")
    if lang is not None:
        _articles(lang)  # reject an unknown language before any loading
    if format == "tydiqa":
        from longctx.data.tydiqa import load_tydiqa

        gold = load_tydiqa(data)
    else:
        gold = load_squad(data)
    preds = read_predictions(predictions)
    known = {ex["id"] for ex in gold.examples}
    extra = [qid for qid in preds if qid not in known]
    if extra:
        log.warning(f"{predictions}: {len(extra)} predictions are for questions not in {data} "
                    f"(first: {', '.join(extra[:5])})")
    v2 = is_squad_v2(gold.version, gold.examples)
    probs = None
    if na_probs and not v2:
        raise LongctxError(f"{na_probs}: no-answer probabilities need SQuAD 2.0 data; {data} is 1.1")
    if na_probs:
        probs = _read_str_map(na_probs, "no-answer probability", (int, float), "a finite number")
        unscored = next((ex["id"] for ex in gold.examples if ex["id"] in preds and ex["id"] not in probs), None)
        if unscored is not None:
            raise LongctxError(f"{na_probs}: question {unscored}: no no-answer probability")
    result = compute_metrics(preds, format=format, examples=gold.examples, version=gold.version, lang=lang,
                             na_probs=probs)
    # As the official scripts print: v1.1 on one line, v2.0 (and TyDi's per-language figures) indented.
    print(json.dumps(result, indent=2 if v2 or "by_language" in result else None))
    return result
