"""TriviaQA reading comprehension (rc) as flat SQuAD-like records, one per (question, document) pair.

Sources:
- the official layout: `qa/<domain>-<split>.json` (`{"Data": [...], "Domain": "Wikipedia"|"Web", ...}`)
  with evidence text in `evidence/wikipedia/<Filename>` (EntityPages) and `evidence/web/<Filename>`
  (SearchResults); the evidence folder defaults to `<qa folder>/../evidence`;
- the hub's `trivia_qa` rc configs by name: `trivia_qa/rc.wikipedia`, `trivia_qa/rc.web`,
  `trivia_qa/rc` (optionally `:split`), through `datasets.load_dataset("mandarjoshi/trivia_qa", config)`.

Each pair becomes `{id: "QuestionId--Filename", title, context, question, answers: {"text", "answer_start"},
is_impossible: False}` plus `question_id`, `domain`, `document`, `doc_source` ("wikipedia"|"web") and
`aliases` (the official ground-truth list used for scoring). The context is the document cut to a token
budget (`max_tokens` tokens of `tokenizer`, or whitespace-separated words when no tokenizer is given);
the answers are every occurrence in that context of any normalised alias: a span of whole words
whose official normalisation (`longctx.data.triviaqa_answers.normalize_answer`) equals an alias, so
"U.S.A", "usa" and "USA's" (-> "USA") all match the alias "u s a" / "usa" as the official metric would.
TriviaQA is distantly supervised: for training, pairs whose truncated document holds no alias are
dropped (counted); for evaluation they are kept with empty answers.
"""
from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longctx.common import LongctxError, log, read_json
from longctx.data.hub import load_hub_dataset
from longctx.data.triviaqa_answers import PUNCTUATION, ground_truths, normalize_answer

DOMAINS = ("Wikipedia", "Web")
HUB_REPO = "mandarjoshi/trivia_qa"
_HUB_NAME = re.compile(r"^(?:mandarjoshi/)?trivia_qa/(?P<config>(?:rc|unfiltered)(?:\.[a-z]+)*)(?::(?P<split>\w+))?$")


@dataclass
class TriviaQAData:
    """Flat (question, document) records plus what reading them did (SquadData-compatible: examples, version, source)."""

    examples: list[dict]
    source: str
    budget: str  # e.g. "4096 tokens (roberta-base)" or "4096 whitespace words"
    domains: list[str] = field(default_factory=list)
    n_questions: int = 0
    n_pairs: int = 0  # (question, document) pairs read, before dropping
    n_truncated: int = 0  # documents longer than the budget
    n_without_answer: int = 0  # pairs whose truncated document holds no alias
    n_dropped: int = 0  # pairs left out: no alias (training only) or an empty document
    version: str = "1.1"

    def __len__(self) -> int:
        return len(self.examples)


# ---------------------------------------------------------------------------------------------
# The qa JSON files: validation shared by the reader and the metric.

def _where(datum: Any, index: int) -> str:
    qid = datum.get("QuestionId") if isinstance(datum, dict) else None
    return f"question {qid}" if isinstance(qid, str) and qid else f"question #{index}"


def _str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def check_qa_json(qa: Any, source: str, *, need_answers: bool = False, need_questions: bool = False) -> None:
    """Raise a one-line LongctxError naming `source` and the question id for anything malformed.

    Answers are required when `need_answers`; otherwise a file may lack them altogether (the official
    test files), but not for some questions only."""
    if not isinstance(qa, dict) or not isinstance(qa.get("Data"), list):
        raise LongctxError(f"{source}: not a TriviaQA qa file (expected an object with a 'Data' list)")
    if qa.get("Domain") not in DOMAINS:
        raise LongctxError(f"{source}: 'Domain' must be one of {', '.join(DOMAINS)}, got {qa.get('Domain')!r:.60}")
    # The verified-subset flags select what is scored: a string "false" would be read as true.
    if not isinstance(qa.get("VerifiedEval", False), bool):
        raise LongctxError(f"{source}: 'VerifiedEval' must be true or false")
    answered = [isinstance(d, dict) and "Answer" in d for d in qa["Data"]]
    answers_required = need_answers or any(answered)
    seen: set[str] = set()
    for i, datum in enumerate(qa["Data"]):
        where = _where(datum, i)
        if not isinstance(datum, dict):
            raise LongctxError(f"{source}: {where}: not an object")
        qid = datum.get("QuestionId")
        if not isinstance(qid, str) or not qid:
            raise LongctxError(f"{source}: {where}: " + ("missing 'QuestionId'" if qid is None
                                                           else "'QuestionId' must be a non-empty string"))
        if qid in seen:
            raise LongctxError(f"{source}: {where}: duplicate QuestionId")
        seen.add(qid)
        if not isinstance(datum.get("QuestionPartOfVerifiedEval", False), bool):
            raise LongctxError(f"{source}: {where}: 'QuestionPartOfVerifiedEval' must be true or false")
        if need_questions and not isinstance(datum.get("Question"), str):
            raise LongctxError(f"{source}: {where}: missing 'Question'")
        if "Answer" in datum or answers_required:
            answer = datum.get("Answer")
            if not isinstance(answer, dict):
                raise LongctxError(f"{source}: {where}: missing 'Answer'")
            if not _str_list(answer.get("Aliases")):
                raise LongctxError(f"{source}: {where}: Answer needs 'Aliases', a list of strings")
            for key in ("NormalizedAliases", "HumanAnswers"):
                if key in answer and not _str_list(answer[key]):
                    raise LongctxError(f"{source}: {where}: Answer '{key}' must be a list of strings")
            if not ground_truths(answer):
                raise LongctxError(f"{source}: {where}: Answer has no aliases")
        for key in ("EntityPages", "SearchResults"):
            pages = datum.get(key, [])
            if not isinstance(pages, list):
                raise LongctxError(f"{source}: {where}: '{key}' must be a list")
            for page in pages:
                if not isinstance(page, dict) or not isinstance(page.get("Filename"), str) or not page["Filename"]:
                    raise LongctxError(f"{source}: {where}: every {key} entry needs a 'Filename'")
                if not isinstance(page.get("DocPartOfVerifiedEval", False), bool):
                    raise LongctxError(f"{source}: {where}: {page['Filename']}: 'DocPartOfVerifiedEval' must be "
                                       f"true or false")


def _verified_only(qa: dict) -> dict:
    """As the official reader: a VerifiedEval file keeps its verified questions (and, for Web, documents)."""
    if not qa.get("VerifiedEval"):
        return qa
    kept = []
    for datum in qa["Data"]:
        if not datum.get("QuestionPartOfVerifiedEval"):
            continue
        if qa["Domain"] == "Web":
            datum = {**datum, **{key: [p for p in datum.get(key, []) if p.get("DocPartOfVerifiedEval")]
                                 for key in ("EntityPages", "SearchResults")}}
        kept.append(datum)
    return {**qa, "Data": kept}


def read_qa_json(path: str | os.PathLike, *, need_answers: bool = False, need_questions: bool = False) -> dict:
    """One official qa/*.json file, validated, with the VerifiedEval filtering of the official reader."""
    qa = read_json(path, "TriviaQA qa file")
    check_qa_json(qa, str(path), need_answers=need_answers, need_questions=need_questions)
    return {**_verified_only(qa), "_source": str(path)}


def is_hub_name(source: str) -> bool:
    return bool(_HUB_NAME.match(source)) and not Path(source).exists()


def load_qa_data(source: str, *, need_answers: bool = False, for_scoring: bool = False,
                 split: str | None = None, default_split: str = "validation") -> list[dict]:
    """Official-layout dicts from a qa JSON file or a hub name (one dict per domain for mixed hub configs).

    A hub split comes from `split`, else the name's `:split`, else `default_split`. `for_scoring`
    loads a hub config's `.nocontext` twin: the metric needs no evidence text."""
    if is_hub_name(source):
        return _load_hub(source, split=split, default_split=default_split, with_text=not for_scoring)
    if not Path(source).is_file():
        raise LongctxError(f"{source}: TriviaQA qa file not found (or use a hub name like trivia_qa/rc.wikipedia)")
    return [read_qa_json(source, need_answers=need_answers, need_questions=not for_scoring)]


# ---------------------------------------------------------------------------------------------
# The hub's trivia_qa configs, converted to the official layout (evidence text kept inline).

def _load_hub(name: str, *, split: str | None, default_split: str, with_text: bool) -> list[dict]:
    m = _HUB_NAME.match(name)
    assert m is not None
    config, split = m["config"], split or m["split"] or default_split
    if with_text and config.endswith(".nocontext"):
        raise LongctxError(f"{name}: a .nocontext config has no evidence text to read (use {config[:-10]})")
    if not with_text and not config.endswith(".nocontext"):
        config += ".nocontext"
    rows = load_hub_dataset(name, HUB_REPO, config, split,
                            hint="download the TriviaQA rc release and pass its qa/<file>.json instead")
    by_domain: dict[str, list[dict]] = {}
    for row in rows:
        answer = row.get("answer") or {}
        datum: dict[str, Any] = {"QuestionId": row["question_id"], "Question": row["question"],
                                 "QuestionSource": row.get("question_source", "")}
        if answer.get("aliases"):  # the test split has empty answers
            datum["Answer"] = {"Aliases": list(answer["aliases"]),
                               "NormalizedAliases": list(answer.get("normalized_aliases") or []),
                               "Value": answer.get("value", ""), "NormalizedValue": answer.get("normalized_value", ""),
                               "Type": answer.get("type", "")}
        entity, search = row.get("entity_pages") or {}, row.get("search_results") or {}
        datum["EntityPages"] = [
            {"Filename": f, "Title": t, "DocSource": s, **({"_text": c} if with_text else {})}
            for f, t, s, c in itertools.zip_longest(entity.get("filename", []), entity.get("title", []),
                                                    entity.get("doc_source", []), entity.get("wiki_context", []),
                                                    fillvalue="")]
        datum["SearchResults"] = [
            {"Filename": f, "Title": t, "Url": u, "Rank": r, **({"_text": c} if with_text else {})}
            for f, t, u, r, c in itertools.zip_longest(search.get("filename", []), search.get("title", []),
                                                       search.get("url", []), search.get("rank", []),
                                                       search.get("search_context", []), fillvalue="")]
        # rc.wikipedia / rc.web are one domain each; the combined rc config is split by evidence kind.
        domain = ("Wikipedia" if ".wikipedia" in config else "Web" if ".web" in config
                  else "Web" if datum["SearchResults"] else "Wikipedia")
        by_domain.setdefault(domain, []).append(datum)
    out = []
    for domain, questions in by_domain.items():
        # The combined config lists a question once per source file; keep its first record per domain.
        unique: dict[str, dict] = {}
        for datum in questions:
            unique.setdefault(datum["QuestionId"], datum)
        out.append({"Data": list(unique.values()), "Domain": domain, "Split": split, "Version": 1.0, "_source": f"{name} ({split})"})
        check_qa_json(out[-1], f"{name} ({split})")
    if not out:
        raise LongctxError(f"{name}: split '{split}' holds no questions")
    return out


# ---------------------------------------------------------------------------------------------
# Truncation to a token budget and alias spans.

def _load_tokenizer(tokenizer: Any) -> Any:
    if isinstance(tokenizer, (str, os.PathLike)):
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(tokenizer))
        except (OSError, ValueError) as e:
            raise LongctxError(f"{tokenizer}: cannot load tokenizer: {str(e).splitlines()[0]}") from None
    return tokenizer


def _word_cut(text: str, cut: int) -> int:
    """Move a cut that falls inside a word back to that word's start (a half word is not the answer)."""
    if 0 < cut < len(text) and text[cut].isalnum() and text[cut - 1].isalnum():
        start = cut
        while start > 0 and text[start - 1].isalnum():
            start -= 1
        if start > 0:
            return start
    return cut


def truncate(text: str, max_tokens: int, tokenizer: Any = None) -> tuple[str, bool]:
    """The longest prefix of `text` within `max_tokens` tokens of `tokenizer` (whitespace words when None).

    Returns (prefix, whether anything was cut). Only the first few characters per token are
    tokenised (doubling until the budget is passed): web documents can run to megabytes."""
    if max_tokens <= 0:
        raise LongctxError(f"max_tokens must be positive, got {max_tokens}")
    if tokenizer is None:
        words = list(itertools.islice(re.finditer(r"\S+", text), max_tokens + 1))
        if len(words) <= max_tokens:
            return text, False
        return text[:words[max_tokens - 1].end()], True
    n_chars = max_tokens * 8
    while True:
        piece = text[:n_chars]
        if n_chars < len(text):  # end the piece on white space so its last word tokenises as in the full text
            space = max(piece.rfind(" "), piece.rfind("\n"))
            piece = piece[:space] if space > 0 else piece
        enc = tokenizer(piece, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        offsets = enc["offset_mapping"]
        if len(offsets) > max_tokens:
            cut = max(end for _, end in offsets[:max_tokens])
            return text[:_word_cut(text, cut)], True
        if n_chars >= len(text):
            return text, False
        n_chars *= 2


# Characters normalisation turns into spaces: white space, `_` and the official punctuation set.
_WORD = re.compile(r"[^\s_" + re.escape("".join(sorted(PUNCTUATION))) + r"]+")


def _word_spans(text: str) -> list[tuple[int, int]]:
    """Maximal runs of characters that normalisation keeps together (not space, punctuation or `_`)."""
    return [m.span() for m in _WORD.finditer(text)]


def find_answer_spans(context: str, aliases: list[str]) -> list[tuple[int, int]]:
    """Every (start, end) character span of `context` whose normalised text equals a normalised alias.

    Spans begin and end on whole words (so "usa" is not found inside "usability") and leave out
    leading articles and surrounding punctuation ("The Beatles'" -> "Beatles" for the alias "beatles").
    Overlapping matches of different aliases are all returned, sorted by position."""
    targets: dict[str, set[tuple[str, ...]]] = {}
    for alias in aliases:
        tokens = tuple(normalize_answer(alias).split())
        if tokens:
            targets.setdefault(tokens[0], set()).add(tokens)
    if not targets:
        return []
    # Normalised tokens of the context with the word each came from; a word normalises on its own
    # exactly as inside the whole text, since its neighbours are space or punctuation.
    words = _word_spans(context)
    cache: dict[str, list[str]] = {}
    word_tokens = []
    for start, end in words:
        word = context[start:end]
        if word not in cache:
            cache[word] = normalize_answer(word).split()
        word_tokens.append(cache[word])
    tokens = [t for norm in word_tokens for t in norm]
    owner = [w for w, norm in enumerate(word_tokens) for _ in norm]

    def glued(a: int, b: int) -> bool:  # words a and b (adjacent) are joined by punctuation only
        return not any(ch.isspace() for ch in context[words[a][1]:words[b][0]])

    spans: set[tuple[int, int]] = set()
    for p, token in enumerate(tokens):
        for target in targets.get(token, ()):
            k = len(target)
            if tuple(tokens[p:p + k]) != target:
                continue
            first, last = owner[p], owner[p + k - 1]
            # Article words glued on by punctuation belong to the surface form: "U.S.A" normalises to
            # "u s" (the final "A" is an article), but the span should still cover "U.S.A".
            while first > 0 and not word_tokens[first - 1] and glued(first - 1, first):
                first -= 1
            while last + 1 < len(words) and not word_tokens[last + 1] and glued(last, last + 1):
                last += 1
            span = (words[first][0], words[last][1])
            if normalize_answer(context[span[0]:span[1]]) == " ".join(target):
                spans.add(span)
    return sorted(spans)


# ---------------------------------------------------------------------------------------------
# The reader.

def _evidence_root(qa_file: str, evidence_dir: str | None) -> Path:
    root = Path(evidence_dir) if evidence_dir else Path(qa_file).resolve().parent.parent / "evidence"
    if not root.is_dir():
        hint = "" if evidence_dir else " (the default, <qa folder>/../evidence; pass evidence_dir)"
        raise LongctxError(f"{qa_file}: evidence folder {root} not found{hint}")
    return root


def _read_evidence(path: Path, qa_file: str, qid: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LongctxError(f"{qa_file}: question {qid}: evidence file {path} not found") from None
    except UnicodeDecodeError as e:
        raise LongctxError(f"{qa_file}: question {qid}: evidence file {path} is not UTF-8 "
                           f"({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise LongctxError(f"{qa_file}: question {qid}: cannot read evidence file {path}: {e.strerror}") from None


def read_triviaqa(qa_file: str | None = None, evidence_dir: str | None = None, *, tokenizer: Any = None,
                  max_tokens: int = 4096, train: bool = False, name: str | None = None,
                  split: str | None = None) -> TriviaQAData:
    """Read TriviaQA rc as flat SQuAD-like (question, document) records with alias answer spans.

    Args:
        qa_file: an official qa JSON file (e.g. triviaqa-rc/qa/wikipedia-dev.json), or a hub name.
        evidence_dir: the folder holding wikipedia/ and web/ (default: <qa folder>/../evidence).
        tokenizer: a tokenizer (or its name or folder) whose tokens `max_tokens` counts; None counts
            whitespace-separated words instead.
        max_tokens: document budget: each document is cut to its first `max_tokens` tokens before
            answers are searched (the question and special tokens are not part of it).
        train: drop pairs whose truncated document holds no alias (counted in `n_dropped`); for
            evaluation (False) they are kept with empty answers.
        name: a hub name instead of `qa_file`: trivia_qa/rc.wikipedia, trivia_qa/rc.web or trivia_qa/rc,
            optionally with :split.
        split: hub split (default: the name's :split, else train when `train`, else validation); not used
            for files.
    """
    if (qa_file is None) == (name is None):
        raise LongctxError("read_triviaqa: give a qa file or a hub name (exactly one)")
    source = str(qa_file if qa_file is not None else name)
    hub = is_hub_name(source)
    if name is not None and not hub:
        raise LongctxError(f"{name}: not a trivia_qa hub name (expected e.g. trivia_qa/rc.wikipedia)")
    qa_files = load_qa_data(source, need_answers=train, split=split, default_split="train" if train else "validation")
    root = None if hub else _evidence_root(source, evidence_dir)
    tok = _load_tokenizer(tokenizer)
    if tok is not None and not getattr(tok, "is_fast", False):
        raise LongctxError(f"{source}: the tokenizer must be a fast (Rust) tokenizer: character offsets are needed")
    budget = (f"{max_tokens} tokens ({getattr(tok, 'name_or_path', '') or type(tok).__name__})" if tok is not None
              else f"{max_tokens} whitespace words")
    result = TriviaQAData(examples=[], source=source, budget=budget)
    seen: set[str] = set()
    empty = 0
    for qa in qa_files:
        label = qa.get("_source", source)
        result.domains.append(qa["Domain"])
        for datum in qa["Data"]:
            qid = datum["QuestionId"]
            answer = datum.get("Answer")
            truths = ground_truths(answer) if answer else []
            result.n_questions += 1
            for kind, key in (("wikipedia", "EntityPages"), ("web", "SearchResults")):
                for page in datum.get(key, []):
                    ex_id = f"{qid}--{page['Filename']}"
                    if ex_id in seen:  # a document listed twice for one question
                        continue
                    seen.add(ex_id)
                    result.n_pairs += 1
                    text = page["_text"] if "_text" in page else _read_evidence(
                        root / kind / page["Filename"], label, qid)
                    if not text.strip():
                        empty += 1
                        continue
                    context, cut = truncate(text, max_tokens, tok)
                    result.n_truncated += cut
                    spans = find_answer_spans(context, truths)
                    if not spans:
                        result.n_without_answer += 1
                        if train:
                            continue
                    result.examples.append({
                        "id": ex_id, "title": page.get("Title", ""), "context": context,
                        "question": datum["Question"],
                        "answers": {"text": [context[s:e] for s, e in spans], "answer_start": [s for s, _ in spans]},
                        "is_impossible": False, "question_id": qid, "domain": qa["Domain"],
                        "document": page["Filename"], "doc_source": kind, "aliases": truths})
    result.n_dropped = empty + (result.n_without_answer if train else 0)
    log.info(f"{source}: {result.n_questions} questions, {result.n_pairs} (question, document) pairs, documents cut "
             f"to {budget} ({result.n_truncated} truncated); {result.n_without_answer} pairs with no alias in the "
             + ("kept text: dropped for training" if train else "kept text: kept with no answer for evaluation")
             + (f"; {empty} empty documents skipped" if empty else ""))
    if not result.examples:
        raise LongctxError(f"{source}: no (question, document) pairs left"
                           + (" with an answer in the kept text" if train else ""))
    return result


def write_triviaqa_squad(data: TriviaQAData | list[dict], path: str | os.PathLike) -> Path:
    """Write the records as a SQuAD v1.1 JSON file (for `longctx finetune` and SQuAD tooling).

    The SQuAD layout has no place for `question_id`, `domain` or `aliases`; score with the original
    qa file (`longctx score --format triviaqa`), whose keys `QuestionId--Filename` are these records' ids.
    Every record needs an answer (read with train=True): SQuAD 1.1 has no unanswerable questions."""
    from longctx.data.squad import write_squad

    examples = data.examples if isinstance(data, TriviaQAData) else data
    unanswered = next((ex["id"] for ex in examples if not ex["answers"]["text"]), None)
    if unanswered is not None:
        raise LongctxError(f"{path}: record {unanswered}: no answer in its document; a SQuAD 1.1 file cannot hold "
                           f"it (read TriviaQA with train=True to drop such pairs)")
    return write_squad(examples, path, version="1.1")
