"""WikiText raw text as articles, and articles as token blocks for masked-language-model pretraining.

WikiText raw files (`wiki.{train,valid,test}.raw`, WikiText-2 and WikiText-103) are plain text in which
each article starts with a top-level heading line ` = Title = `; sections are ` = = Section = = `, deeper
ones have more `=`. `split_articles` cuts a file at the top-level headings only, so an article keeps its
sections. The hub copies (`datasets.load_dataset("Salesforce/wikitext", "wikitext-103-raw-v1")`) hold the
same text one line per row; `load_articles` reads both.

Packing (`TokenStream`, `block_spans`): every block is `[cls] + up to block_size - 2 text tokens + [sep]`.

* `"concat"` (default), RoBERTa's FULL-SENTENCES: the articles are laid end to end with one separator
  token (the model's sep, RoBERTa's document separator) between articles, and cut into full blocks; only
  the very last block is short. A block may hold the end of one article and the start of the next, with the
  separator marking the boundary. Chosen because WikiText-103 articles average ~3.6k RoBERTa tokens: packing
  each article on its own would leave ~40% of a 4096-token block as padding and rarely train the far
  positions, which are the point of continuing pretraining at 4096.
* `"article"`: blocks never cross an article boundary; the last block of every article is short. Costs
  padding (the log reports how much), keeps each block inside one article.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from longctx.common import LongctxError, log
from longctx.data.hub import load_hub_dataset

Packing = Literal["concat", "article"]

# A top-level heading: " = Title = " (one '=' each side). " = = Section = = " starts with "= " after the
# first "= ", which the lookahead refuses.
_HEADING = re.compile(r"= (?!= )(.+) =")

# Hub short names -> (repository, config). Any "repo:config" is accepted too.
_HUB = {
    "wikitext": ("Salesforce/wikitext", "wikitext-103-raw-v1"),
    "wikitext-103": ("Salesforce/wikitext", "wikitext-103-raw-v1"),
    "wikitext-103-raw-v1": ("Salesforce/wikitext", "wikitext-103-raw-v1"),
    "wikitext-2": ("Salesforce/wikitext", "wikitext-2-raw-v1"),
    "wikitext-2-raw-v1": ("Salesforce/wikitext", "wikitext-2-raw-v1"),
}


@dataclass
class Article:
    """One article: its title ('' for text before the first heading), its text (heading line included,
    newlines kept) and the 1-based line where it starts in its source."""

    title: str
    text: str
    line: int


def read_raw(path: str | os.PathLike) -> str:
    """A raw text file as one string (universal newlines: CRLF copies read like LF)."""
    path = Path(path)
    if not path.is_file():
        raise LongctxError(f"{path}: WikiText file not found")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise LongctxError(f"{path}: line {line}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def heading_title(line: str) -> str | None:
    """The title if `line` is a top-level ` = Title = ` heading, else None."""
    m = _HEADING.fullmatch(line.strip())
    return m.group(1).strip() if m else None


def split_articles(text: str, source: str = "<text>") -> list[Article]:
    """Cut WikiText raw text into articles at its top-level headings.

    Every character of `text` lands in exactly one article (a blank preamble joins the first article), so
    `sum(len(a.text))` equals `len(text)`. Text without any heading is one untitled article (with a warning).
    """
    if not text.strip():
        raise LongctxError(f"{source}: no text")
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if heading_title(line) is not None]
    if not starts:
        log.warning("%s: no ' = Title = ' headings; treating the whole text as one article", source)
        return [Article(title="", text=text, line=1)]
    articles = []
    preamble = "".join(lines[: starts[0]])
    if preamble.strip():
        articles.append(Article(title="", text=preamble, line=1))
        preamble = ""
    bounds = starts + [len(lines)]
    for k, (a, b) in enumerate(zip(bounds, bounds[1:])):
        body = "".join(lines[a:b])
        articles.append(Article(title=heading_title(lines[a]) or "", text=(preamble + body) if k == 0 else body,
                                line=a + 1))
    return articles






def hub_target(name: str) -> tuple[str, str | None]:
    """'wikitext' -> ('Salesforce/wikitext', 'wikitext-103-raw-v1'); 'repo:config' -> (repo, config)."""
    if name in _HUB:
        return _HUB[name]
    repo, _, config = name.partition(":")
    return repo, config or None


def load_hub_text(name: str, split: str) -> tuple[str, str]:
    """The text of a hub WikiText split (one row per line) as one string, and a label naming it."""
    repo, config = hub_target(name)
    label = f"{repo}{f' ({config})' if config else ''} {split}"
    rows = load_hub_dataset(name, repo, config, split,
                            hint="pass --train-file/--eval-file paths to wiki.*.raw files instead")["text"]
    # Rows are lines with their newline; blank lines are '' rows.
    return "".join(r if r.endswith("\n") else r + "\n" for r in rows), label


def load_articles(files: list[str] | None = None, dataset: str | None = None,
                  split: str = "train") -> tuple[list[Article], str]:
    """Articles from local raw files (in order) or, without files, from a hub dataset split."""
    if files:
        articles: list[Article] = []
        for f in files:
            articles += split_articles(read_raw(f), source=str(f))
        return articles, ", ".join(map(str, files))
    if dataset:
        text, label = load_hub_text(dataset, split)
        return split_articles(text, source=label), label
    raise LongctxError("no text given: pass file paths or a hub dataset name")


@dataclass
class TokenizedArticles:
    """Articles' texts with their token ids (no special tokens)."""

    texts: list[str]
    ids: list[np.ndarray]
    source: str
    titles: list[str] = field(default_factory=list)

    @property
    def n_tokens(self) -> int:
        return int(sum(len(a) for a in self.ids))

    @property
    def n_chars(self) -> int:
        return sum(len(t) for t in self.texts)

    def prefix(self, counts: list[int], tokenizer) -> "TokenizedArticles":
        """The first `counts[i]` tokens of article i (for as many articles as `counts` has), with each text
        cut after its last kept token, so characters and tokens still describe the same text."""
        texts, ids = [], []
        for text, a, k in zip(self.texts, self.ids, counts):
            if k <= 0:
                break
            if k < len(a):  # cut inside this article: where its k-th token ends in the text
                enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
                end = enc["offset_mapping"][k - 1][1] if len(enc["input_ids"]) == len(a) else \
                    round(len(text) * k / len(a))  # offsets disagree with the ids: proportional estimate
                text = text[:end]
            texts.append(text)
            ids.append(a[:k])
        return TokenizedArticles(texts=texts, ids=ids, source=self.source, titles=self.titles[: len(texts)])


def tokenize_articles(articles: list[Article], tokenizer, source: str = "<text>",
                      batch: int = 64) -> TokenizedArticles:
    """Token ids of each article (no special tokens), in batches through the (fast) tokenizer."""
    ids: list[np.ndarray] = []
    texts = [a.text for a in articles]
    for i in range(0, len(texts), batch):
        enc = tokenizer(texts[i:i + batch], add_special_tokens=False, return_attention_mask=False, verbose=False)
        ids += [np.asarray(x, dtype=np.int32) for x in enc["input_ids"]]  # int32: WikiText-103 is ~120M tokens
    for a, x in zip(articles, ids):
        if len(x) == 0 and a.text.strip():
            raise LongctxError(f"{source}: line {a.line}: article '{a.title}' tokenizes to nothing")
    return TokenizedArticles(texts=texts, ids=ids, source=source, titles=[a.title for a in articles])


@dataclass
class TokenStream:
    """All articles' tokens in one array, ready to cut into blocks.

    `concat` packing puts one separator token between consecutive articles (`separator` marks them);
    `article` packing puts none and keeps `starts` so blocks can stop at article ends."""

    ids: np.ndarray
    separator: np.ndarray  # bool, True at inserted separator tokens
    starts: np.ndarray  # index of each article's first token
    lengths: np.ndarray  # tokens per article
    packing: str

    @property
    def n_text_tokens(self) -> int:
        return int(self.lengths.sum())


def make_stream(tokens: TokenizedArticles, sep_id: int, packing: Packing = "concat") -> TokenStream:
    if packing not in ("concat", "article"):
        raise LongctxError(f"unknown packing '{packing}' (choose concat or article)")
    parts, flags, starts, pos = [], [], [], 0
    for k, a in enumerate(tokens.ids):
        if packing == "concat" and k > 0:
            parts.append(np.array([sep_id], dtype=a.dtype))
            flags.append(np.array([True]))
            pos += 1
        starts.append(pos)
        parts.append(a)
        flags.append(np.zeros(len(a), dtype=bool))
        pos += len(a)
    ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    sep = np.concatenate(flags) if flags else np.zeros(0, dtype=bool)
    return TokenStream(ids=ids, separator=sep, starts=np.asarray(starts, dtype=np.int64),
                       lengths=np.asarray([len(a) for a in tokens.ids], dtype=np.int64), packing=packing)


def block_spans(stream: TokenStream, block_size: int) -> list[tuple[int, int]]:
    """[start, end) ranges of the stream, one per block of `block_size` (cls and sep included)."""
    content = block_size - 2
    if content < 1:
        raise LongctxError(f"block size {block_size} leaves no room for text between cls and sep")
    if stream.packing == "concat":
        n = len(stream.ids)
        return [(s, min(s + content, n)) for s in range(0, n, content)]
    spans = []
    for start, length in zip(stream.starts.tolist(), stream.lengths.tolist()):
        spans += [(s, min(s + content, start + length)) for s in range(start, start + length, content)]
    return spans


def padding_waste(spans: list[tuple[int, int]], block_size: int) -> float:
    """Fraction of the blocks' positions (n_blocks x block_size) that hold no token (padding)."""
    if not spans:
        return 0.0
    used = sum(e - s + 2 for s, e in spans)
    return 1.0 - used / (len(spans) * block_size)


def prefix_counts(stream: TokenStream, end: int) -> list[int]:
    """Tokens of each article that lie before stream position `end` (articles after it: none)."""
    counts = []
    for start, length in zip(stream.starts.tolist(), stream.lengths.tolist()):
        if start >= end:
            break
        counts.append(min(length, end - start))
    return counts


def with_specials(ids: np.ndarray, cls_id: int, sep_id: int) -> np.ndarray:
    return np.concatenate([[cls_id], ids, [sep_id]]).astype(np.int64)
