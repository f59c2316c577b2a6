"""SQuAD-format QA data: local JSON files or Hugging Face hub datasets, as flat validated records.

SQuAD 1.1, SQuAD 2.0 (`is_impossible`), XQuAD, MLQA and TyDi QA GoldP share the SQuAD layout
`{"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question", "answers": [...]}]}]}], "version"}`.
Every loader returns the same flat records:
`{id, title, context, question, answers: {"text": [...], "answer_start": [...]}, is_impossible}`.
"""
from __future__ import annotations

import contextlib
import gc
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from longctx.common import LongctxError, log, read_json, write_json
from longctx.data.hub import load_hub_dataset


@dataclass
class SquadData:
    """Flat question records plus the SQuAD version ("1.1" or "2.0") and where they came from."""

    examples: list[dict]
    version: str
    source: str

    def __len__(self) -> int:
        return len(self.examples)


# Short names -> (hub repository, config, SQuAD version of its answers).
_HUB = {
    "squad": ("rajpurkar/squad", None, "1.1"),
    "squad_v2": ("rajpurkar/squad_v2", None, "2.0"),
    "tydiqa": ("google-research-datasets/tydiqa", "secondary_task", "1.1"),
}


def is_squad_v2(version: Any, examples: Iterable[dict] = ()) -> bool:
    """The one test for SQuAD 2.0 data: a version of 2.x ("2.0", "v2.0") or any unanswerable question.

    It decides the metric (`longctx.qa.metrics`), no-answer decoding and the layout written by `to_squad_json`."""
    return str(version or "").lstrip("v").startswith("2") or any(ex.get("is_impossible") for ex in examples)


def hub_target(name: str) -> tuple[str, str | None, str]:
    """A short name -> (hub repository, config, SQuAD version); any other name is taken as a repository."""
    if name in _HUB:
        return _HUB[name]
    if name.startswith("xquad."):
        return "google/xquad", name, "1.1"
    if name.startswith("mlqa."):
        return "facebook/mlqa", name, "1.1"
    return name, None, "1.1"


def load_squad(source: str, *, split: str | None = None, max_misaligned: float = 0.01) -> SquadData:
    """Load SQuAD-format data from a local JSON file or a hub dataset name, validated.

    Args:
        source: path to a SQuAD-layout JSON file, or a hub name: squad, squad_v2, xquad.<lang>,
            mlqa.<context lang>.<question lang>, tydiqa (GoldP), or any hub repository in that layout.
        split: hub split (default: validation); not used for local files.
        max_misaligned: largest fraction of answers whose text may differ from the context at
            answer_start before loading fails (below it a warning gives the count).
    """
    source = os.fspath(source)
    path = Path(source)
    if path.exists():
        with _no_gc():
            examples, version = _parse_file(path)
        label = str(path)
    elif source.endswith(".json") or (os.sep in source and not _looks_like_repo(source)):
        raise LongctxError(f"{source}: SQuAD file not found")
    else:
        examples, version = _load_hub(source, split or "validation")
        label = f"{source} ({split or 'validation'})"
    _check(examples, label, max_misaligned, version)
    return SquadData(examples=examples, version=version, source=label)


@contextlib.contextmanager
def _no_gc():
    """Pause the cyclic GC: building ~10^5 small dicts next to a large parsed JSON tree otherwise
    triggers repeated full collections that triple the load time (none of these objects form cycles)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _looks_like_repo(source: str) -> bool:
    """'owner/name' is a hub repository; './x', '/x' or 'a/b/c' are paths that do not exist."""
    return source.count("/") == 1 and not source.startswith((".", "/"))


class _BadRecord(Exception):
    """A field problem; `_parse_file` adds where it happened (cheaper than formatting it for every record)."""


def _field(obj: Any, key: str, kind: type) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise _BadRecord(f"missing field '{key}'")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise _BadRecord(f"field '{key}' must be a {kind.__name__}, got {type(value).__name__}")
    return value


def _parse_file(path: Path) -> tuple[list[dict], str]:
    obj = read_json(path, "SQuAD file")
    if not isinstance(obj, dict):
        raise LongctxError(f"{path}: not a SQuAD file (expected an object with a 'data' list)")
    examples: list[dict] = []
    a = p = q = qid = None
    try:
        for a, article in enumerate(_field(obj, "data", list)):
            p = q = qid = None
            title = article.get("title", "") if isinstance(article, dict) else ""
            for p, para in enumerate(_field(article, "paragraphs", list)):
                q = qid = None
                context = _field(para, "context", str)
                for q, qa in enumerate(_field(para, "qas", list)):
                    qid = None
                    qid = _field(qa, "id", str)
                    question = _field(qa, "question", str)
                    texts, starts = [], []
                    for answer in _field(qa, "answers", list):
                        texts.append(_field(answer, "text", str))
                        starts.append(_field(answer, "answer_start", int))
                        if starts[-1] < 0:
                            raise _BadRecord(f"field 'answer_start' must be 0 or more, got {starts[-1]}")
                    # Strict: bool("false") is True, and a wrong flag switches metric, decoding and training.
                    impossible = qa.get("is_impossible")  # None: absent, decided below from the version
                    if "is_impossible" in qa and not isinstance(impossible, bool):
                        raise _BadRecord(f"field 'is_impossible' must be true or false, got "
                                         f"{type(impossible).__name__} {impossible!r:.40}")
                    examples.append({"id": qid, "title": title, "context": context, "question": question,
                                     "answers": {"text": texts, "answer_start": starts},
                                     "is_impossible": impossible})
    except _BadRecord as e:
        if qid is not None:
            where = f"question {qid}"
        else:
            where = " ".join(f"{name} {i}" for name, i in (("article", a), ("paragraph", p), ("question", q))
                             if i is not None)
        raise LongctxError(f"{path}: {where + ': ' if where else ''}{e}") from None
    version = "2.0" if is_squad_v2(obj.get("version"), examples) else "1.1"
    for ex in examples:
        if ex["is_impossible"] is None:
            # Absent: evaluate-v2.0.py decides "has an answer" by the answers list alone; do the same.
            ex["is_impossible"] = version == "2.0" and not ex["answers"]["text"]
    return examples, version


def _check(examples: list[dict], source: str, max_misaligned: float, version: str) -> None:
    """Duplicate ids, empty contexts and answer lists the version does not allow fail; misaligned answer
    spans fail above `max_misaligned`.

    SQuAD 1.1: every question has an answer (evaluate-v1.1.py crashes on an empty list, and silently scoring
    such a question 0 hides a broken file). SQuAD 2.0: an unanswerable question has no answers, an answerable
    one at least one (evaluate-v2.0.py counts a question as answerable by its answers list alone, so a
    contradicting `is_impossible` would make training and scoring disagree)."""
    v2 = is_squad_v2(version)
    seen: set[str] = set()
    misaligned: list[str] = []
    n_answers = 0
    for ex in examples:
        qid, context = ex["id"], ex["context"]
        if qid in seen:
            raise LongctxError(f"{source}: question {qid}: duplicate question id")
        seen.add(qid)
        if not context.strip():
            raise LongctxError(f"{source}: question {qid}: empty context")
        n = len(ex["answers"]["text"])
        if not v2 and not n:
            raise LongctxError(f"{source}: question {qid}: no answers (SQuAD 1.1 needs at least one; "
                               f"an unanswerable question needs \"is_impossible\": true, SQuAD 2.0)")
        if v2 and ex["is_impossible"] and n:
            raise LongctxError(f"{source}: question {qid}: is_impossible is true but it has {n} answer(s)")
        if v2 and not ex["is_impossible"] and not n:
            raise LongctxError(f"{source}: question {qid}: no answers but is_impossible is false")
        for text, start in zip(ex["answers"]["text"], ex["answers"]["answer_start"]):
            n_answers += 1
            if context[start:start + len(text)] != text:
                misaligned.append(qid)
    if misaligned:
        fraction = len(misaligned) / n_answers
        message = (f"{source}: {len(misaligned)} of {n_answers} answers ({fraction:.2%}) are not found at "
                   f"their answer_start")
        if fraction > max_misaligned:
            raise LongctxError(f"{message}, more than max_misaligned={max_misaligned:g}; "
                               f"first: {', '.join(list(dict.fromkeys(misaligned))[:5])}")
        log.warning(message)


def _load_hub(name: str, split: str) -> tuple[list[dict], str]:
    repo, config, version = hub_target(name)
    rows = load_hub_dataset(name, repo, config, split, hint="download the JSON and pass its path").to_list()
    examples = []
    for r in rows:
        answers = r.get("answers") or {"text": [], "answer_start": []}
        examples.append({"id": str(r["id"]), "title": r.get("title", ""), "context": r["context"],
                         "question": r["question"],
                         "answers": {"text": list(answers["text"]), "answer_start": list(answers["answer_start"])},
                         "is_impossible": version == "2.0" and not answers["text"]})
    return examples, version


def spread_sample(examples: list[dict], n: int | None) -> list[dict]:
    """`n` questions taken at an even stride over the whole list, so every article is represented (a file's
    first questions all come from its first article: SQuAD dev's first 500 are all Super_Bowl_50)."""
    if not n or n >= len(examples):
        return examples
    step = len(examples) / n
    return [examples[int(i * step)] for i in range(n)]


def to_squad_json(examples: list[dict], version: str = "1.1") -> dict:
    """The official nested layout, grouping questions by title then context (first-seen order)."""
    v2 = is_squad_v2(version)
    articles: dict[str, dict[str, list]] = {}
    for ex in examples:
        qa: dict[str, Any] = {
            "answers": [{"answer_start": s, "text": t}
                        for t, s in zip(ex["answers"]["text"], ex["answers"]["answer_start"])],
            "question": ex["question"], "id": ex["id"]}
        if v2:
            qa["is_impossible"] = bool(ex.get("is_impossible", False))
        articles.setdefault(ex.get("title", ""), {}).setdefault(ex["context"], []).append(qa)
    return {"data": [{"title": title, "paragraphs": [{"context": c, "qas": qas} for c, qas in paragraphs.items()]}
                     for title, paragraphs in articles.items()],
            "version": "v2.0" if v2 else "1.1"}


def write_squad(examples: list[dict], path: str | os.PathLike, version: str = "1.1") -> Path:
    """Write `examples` as an official-layout SQuAD JSON file (atomically)."""
    return write_json(path, to_squad_json(examples, version), indent=None)
