"""Long-context QA from short-context QA: SQ3 / XQ3 (each paragraph joined with k-1 others).

`concat(examples, k=3)` gives every question a context made of its own ("gold") paragraph and k-1
distractor paragraphs, joined with a separator. The gold paragraph's slot is drawn uniformly among the k
slots (seeded; `gold_position` can pin it first, in the middle or last), answer_start is shifted by the gold paragraph's offset, every gold answer of every
question is kept, and SQuAD 2.0 impossible questions stay impossible. All questions of a paragraph share
one long context, so the output has as many questions as the input, with the same ids and order.

Distractors:
  * neighbours: the paragraphs nearest to the gold one in the same article (next, previous, second next,
    ...); when the article has fewer than k paragraphs, the first paragraphs of the following articles
    (wrapping around) fill the rest. The distractors keep their document order around the gold slot.
  * random: k-1 paragraphs drawn (seeded) from the whole dataset.

Differences from the thesis' SQ3/XQ3 (see docs/EXPERIMENTS.md): the thesis kept one question per
paragraph and joined the paragraphs without a separator. Here every question is kept and a separator
("\\n\\n") marks the paragraph boundary; `questions="first", separator=""` rebuilds the thesis' variant.

XQuAD's languages list the same paragraphs in the same order, so with the same seed every language gets
the same distractors and gold slots: XQ3 stays a parallel corpus.

`longctx concat` (the verb `concat_dataset`) builds such a file from any SQuAD-format file; `longctx sweep`
and the Kubeflow pipeline's data step build theirs through the same `concat_file`.
"""
from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path
from typing import Any, Literal

from longctx.common import LongctxError, log

Distractors = Literal["neighbours", "random"]
GoldPosition = Literal["random", "first", "middle", "last"]


def _paragraphs(examples: list[dict]) -> tuple[list[tuple[str, str]], list[list[int]], list[list[int]]]:
    """Distinct (title, context) paragraphs in first-seen order, each article's paragraph indices, and
    each paragraph's question indices."""
    index: dict[tuple[str, str], int] = {}
    paragraphs: list[tuple[str, str]] = []
    questions: list[list[int]] = []
    articles: dict[str, list[int]] = {}
    for q, ex in enumerate(examples):
        key = (ex.get("title", ""), ex["context"])
        p = index.get(key)
        if p is None:
            p = index[key] = len(paragraphs)
            paragraphs.append(key)
            questions.append([])
            articles.setdefault(key[0], []).append(p)
        questions[p].append(q)
    return paragraphs, list(articles.values()), questions


def _neighbours(p: int, article: list[int], position: int, articles: list[list[int]], article_no: int,
                need: int, contexts: list[str]) -> list[int]:
    """The `need` paragraphs nearest to paragraph `p` (at `position` in its article), then other articles'."""
    chosen: list[int] = []
    seen = {contexts[p]}

    def take(i: int) -> bool:
        if contexts[i] not in seen:
            seen.add(contexts[i])
            chosen.append(i)
        return len(chosen) >= need

    for distance in range(1, len(article)):
        for j in (position + distance, position - distance):
            if 0 <= j < len(article) and take(article[j]):
                return chosen
    for step in range(1, len(articles)):
        for i in articles[(article_no + step) % len(articles)]:
            if take(i):
                return chosen
    return chosen


def gold_slot(gold_position: str, k: int, drawn: int) -> int:
    """The gold paragraph's slot among k: `drawn` (uniform, seeded) for random, else the named slot."""
    slots = {"random": drawn, "first": 0, "middle": k // 2, "last": k - 1}
    if gold_position not in slots:
        raise LongctxError(f"concat: gold_position must be one of {', '.join(slots)}, got {gold_position!r}")
    return slots[gold_position]


def concat(examples: list[dict], k: int = 3, distractors: Distractors = "neighbours", separator: str = "\n\n",
           seed: int = 0, questions: Literal["all", "first"] = "all",
           gold_position: GoldPosition = "random") -> list[dict]:
    """Give every question a context of its paragraph joined with k-1 distractor paragraphs (SQ3/XQ3).

    Args:
        examples: flat SQuAD records (longctx.data.squad.load_squad(...).examples).
        k: paragraphs per context (1 returns the questions unchanged).
        distractors: neighbours (nearest paragraphs of the same article, then of the following articles)
            or random (anywhere in the data, seeded).
        separator: text between paragraphs.
        seed: seed for the gold paragraph's slot and, with random distractors, their choice.
        questions: all (every question of every paragraph) or first (only each paragraph's first
            question, as the thesis did).
        gold_position: slot of the question's own paragraph: random (uniform, seeded), first, middle or last.
            The slot is drawn for every choice, so a seed gives the same distractors whatever the position.

    Returns:
        New records (same ids and order, other fields copied) with the long context and shifted answers.
    """
    if k < 1:
        raise LongctxError(f"concat: k must be at least 1, got {k}")
    if distractors not in ("neighbours", "random"):
        raise LongctxError(f"concat: distractors must be neighbours or random, got {distractors!r}")
    if questions not in ("all", "first"):
        raise LongctxError(f"concat: questions must be all or first, got {questions!r}")
    gold_slot(gold_position, k, 0)  # a bad name fails before any work
    paragraphs, articles, by_paragraph = _paragraphs(examples)
    contexts = [c for _, c in paragraphs]
    if k > 1 and len(set(contexts)) < k:
        raise LongctxError(f"concat: k={k} needs at least {k} distinct paragraphs, the data has {len(set(contexts))}")
    where: dict[int, tuple[int, int]] = {}  # paragraph -> (article number, position in the article)
    for a, article in enumerate(articles):
        for position, p in enumerate(article):
            where[p] = (a, position)

    rng = random.Random(seed)
    long_context: dict[int, tuple[str, int]] = {}  # paragraph -> (joined text, offset of the gold paragraph)
    for p, context in enumerate(contexts):
        slot = gold_slot(gold_position, k, rng.randrange(k))
        if k == 1:
            long_context[p] = (context, 0)
            continue
        if distractors == "neighbours":
            a, position = where[p]
            others = _neighbours(p, articles[a], position, articles, a, k - 1, contexts)
            others.sort(key=lambda i: ((where[i][0] - a) % len(articles), where[i][1]))  # document order
        else:
            others, seen = [], {context}
            while len(others) < k - 1:  # rejection sampling: k is tiny next to the number of paragraphs
                i = rng.randrange(len(contexts))
                if contexts[i] not in seen:
                    seen.add(contexts[i])
                    others.append(i)
        parts = [contexts[i] for i in others]
        parts.insert(slot, context)
        offset = sum(len(t) + len(separator) for t in parts[:slot])
        long_context[p] = (separator.join(parts), offset)

    keep = set(range(len(examples)))
    if questions == "first":
        keep = {qs[0] for qs in by_paragraph}
    paragraph_of = {q: p for p, qs in enumerate(by_paragraph) for q in qs}
    out: list[dict] = []
    for q, ex in enumerate(examples):
        if q not in keep:
            continue
        text, offset = long_context[paragraph_of[q]]
        record = dict(ex)
        record["context"] = text
        record["answers"] = {"text": list(ex["answers"]["text"]),
                             "answer_start": [s + offset for s in ex["answers"]["answer_start"]]}
        out.append(record)
    return out


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def concat_file(source: str, out: str | os.PathLike, *, k: int = 3, distractors: Distractors = "neighbours",
                separator: str = "\n\n", seed: int = 0, questions: Literal["all", "first"] = "all",
                gold_position: GoldPosition = "random") -> dict[str, Any]:
    """Read a SQuAD-format file, `concat` it and write the result (official layout, atomically).

    Returns a small manifest: source, its sha256 (local files), the parameters and the counts."""
    from longctx.data.squad import load_squad, write_squad

    data = load_squad(source)
    examples = concat(data.examples, k=k, distractors=distractors, separator=separator, seed=seed,
                      questions=questions, gold_position=gold_position)
    write_squad(examples, out, data.version)
    local = Path(source).is_file()
    return {"source": str(source), "source_sha256": sha256(source) if local else None, "k": k,
            "distractors": distractors, "separator": separator, "seed": seed, "questions": questions,
            "gold_position": gold_position, "version": data.version, "questions_in": len(data.examples),
            "questions_out": len(examples), "out": str(out)}


def concat_dataset(*, data: str, out: str, k: int = 3, distractors: Distractors = "neighbours",
                   gold_position: GoldPosition = "random", separator: str = "\n\n", seed: int = 0,
                   questions: Literal["all", "first"] = "all", force: bool = False) -> dict[str, Any]:
    """Build a long-context QA file (SQ3/XQ3): each question's paragraph joined with k-1 distractors.

    Args:
        data: SQuAD-format JSON file (v1.1 or v2.0, e.g. SQuAD or an XQuAD language) or dataset name.
        out: the SQuAD-format JSON file to write.
        k: paragraphs per context (3 for SQ3/XQ3).
        distractors: neighbours (nearest paragraphs of the same article, then of the following articles)
            or random (anywhere in the data).
        gold_position: slot of the question's own paragraph: random (uniform), first, middle or last.
        separator: text between paragraphs.
        seed: seed for the gold slot and random distractors (the same seed keeps XQuAD's languages parallel).
        questions: all (every question) or first (each paragraph's first question, as the thesis did).
        force: overwrite an existing out file.

    Example:
        longctx concat --data dev-v1.1.json --k 3 --distractors random --gold-position random --seed 0 --out sq3-dev.json
    """
    if Path(out).is_dir():
        raise LongctxError(f"{out}: is a folder; give the JSON file to write")
    if Path(out).exists() and not force:
        raise LongctxError(f"{out}: exists (pass --force to overwrite)")
    built = concat_file(data, out, k=k, distractors=distractors, separator=separator, seed=seed,
                        questions=questions, gold_position=gold_position)
    log.info("%s: %d questions (SQuAD %s) from %s, k=%d, %s distractors, gold %s, seed %d", out,
             built["questions_out"], built["version"], data, k, distractors, gold_position, seed)
    return built
