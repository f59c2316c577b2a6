"""TyDi QA GoldP (Clark et al. 2020, section 8): the gold-passage task, in SQuAD 1.1 layout.

Data: the official `tydiqa-goldp-v1.1-train.json` / `tydiqa-goldp-v1.1-dev.json`, or the hub short name
`tydiqa` (google-research-datasets/tydiqa, config secondary_task, splits train / validation); both are
read by `longctx.data.squad.load_squad`, `load_tydiqa` adds the GoldP checks.

The language of a question is the prefix of its id: "arabic-2387335860751143628-1" is Arabic (older
copies write "english--<hash>-..."; the language is still what comes before the first "-").

Scoring, as TyDi's gold_passage_baseline evaluates it: evaluate-v1.1.py (SQuAD normalisation) on each
language separately, and the headline EM/F1 is the mean over the languages **without English**. Here
(`goldp_summary`, called by `longctx.qa.metrics.compute_metrics` for format "tydiqa", or for SQuAD-format
data whose ids all carry a GoldP language prefix, `is_goldp`):

* `exact_match`, `f1`: mean over the non-English languages present (TyDi GoldP's reported figure);
* `languages_averaged`: which languages that mean is over;
* `overall_exact_match`, `overall_f1`, `total`: evaluate-v1.1.py on all questions, English included;
* `by_language`: {language: {exact_match, f1, total}}.
"""
from __future__ import annotations

from typing import Mapping

from longctx.common import LongctxError, log
from longctx.data.squad import SquadData, is_squad_v2, load_squad

# The GoldP languages (v1.1 dropped Thai and Japanese: no whitespace, which SQuAD's metric needs).
LANGUAGES = ("arabic", "bengali", "english", "finnish", "indonesian", "korean", "russian", "swahili", "telugu")
EXCLUDED_FROM_AVERAGE = "english"


def language(qid: str) -> str | None:
    """The GoldP language a question id starts with ("arabic-123-0" -> "arabic"), or None."""
    prefix = qid.split("-", 1)[0]
    return prefix if prefix in LANGUAGES and len(qid) > len(prefix) else None


def is_goldp(examples: list[dict]) -> bool:
    """Whether every question id carries a GoldP language prefix (and there is at least one question)."""
    return bool(examples) and all(language(ex["id"]) for ex in examples)


def by_language(examples: list[dict], source: str = "TyDi QA GoldP data") -> dict[str, list[dict]]:
    """The questions grouped by language (in LANGUAGES order); an id without a language prefix is an error."""
    groups: dict[str, list[dict]] = {lang: [] for lang in LANGUAGES}
    for ex in examples:
        lang = language(ex["id"])
        if lang is None:
            raise LongctxError(f"{source}: question {ex['id']}: the id does not start with a TyDi QA GoldP "
                               f"language ({', '.join(LANGUAGES)}), so it cannot be scored per language")
        groups[lang].append(ex)
    return {lang: group for lang, group in groups.items() if group}


def load_tydiqa(source: str, *, split: str | None = None) -> SquadData:
    """TyDi QA GoldP from an official file or the hub (`tydiqa`), checked: every id names its language and
    no question is unanswerable (GoldP keeps only answerable ones)."""
    data = load_squad(source, split=split)
    by_language(data.examples, data.source)
    if is_squad_v2(data.version, data.examples):
        raise LongctxError(f"{data.source}: has unanswerable questions or version 2.x: TyDi QA GoldP is "
                           f"SQuAD 1.1 layout with answerable questions only")
    return data


def goldp_summary(overall: Mapping[str, float], per_language: Mapping[str, Mapping[str, float]],
                  n_questions: Mapping[str, int]) -> dict:
    """TyDi GoldP's figures from SQuAD 1.1 scores (see the module docstring for the fields).

    Args:
        overall: {"exact_match", "f1"} over all questions.
        per_language: {language: {"exact_match", "f1"}} for each language present.
        n_questions: {language: number of questions}.
    """
    averaged = [lang for lang in per_language if lang != EXCLUDED_FROM_AVERAGE]
    if not averaged:  # English only (a subset, or the English file): nothing else to average
        log.warning("TyDi QA GoldP: only English questions, so exact_match/f1 are English's (the reported "
                    "GoldP figure leaves English out)")
        averaged = list(per_language)
    result = {name: sum(per_language[lang][name] for lang in averaged) / len(averaged)
              for name in ("exact_match", "f1")}
    result["languages_averaged"] = averaged
    result["overall_exact_match"], result["overall_f1"] = overall["exact_match"], overall["f1"]
    result["total"] = sum(n_questions.values())
    result["by_language"] = {lang: {"exact_match": s["exact_match"], "f1": s["f1"], "total": n_questions[lang]}
                             for lang, s in per_language.items()}
    return result
