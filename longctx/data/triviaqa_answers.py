"""TriviaQA's answer normalisation and ground-truth list, shared by the reader and the metric.

The reader (`longctx.data.triviaqa`) finds answer spans whose normalised text equals a normalised alias;
the metric (`longctx.qa.triviaqa_metrics`) compares normalised predictions with the same list. Both follow
the official evaluation (mandarjoshi90/triviaqa, evaluation/triviaqa_evaluation.py, v1.0).
"""
from __future__ import annotations

import re
import string

# string.punctuation plus the typographic quotes the official script adds.
PUNCTUATION = frozenset(string.punctuation + "\u2018\u2019\u00b4`")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """The official normalisation: `_` -> space, lower case, punctuation -> space, no articles, single spaces."""
    text = "".join(" " if ch in PUNCTUATION else ch for ch in s.replace("_", " ").lower())
    return " ".join(_ARTICLES.sub(" ", text).split())


def ground_truths(answer: dict) -> list[str]:
    """The official ground-truth list: NormalizedAliases plus normalised HumanAnswers.

    Files without NormalizedAliases (hand-made ones) fall back to the normalised Aliases."""
    aliases = answer.get("NormalizedAliases")
    if aliases is None:
        aliases = [normalize_answer(a) for a in answer.get("Aliases", [])]
    return list(aliases) + [normalize_answer(a) for a in answer.get("HumanAnswers", [])]
