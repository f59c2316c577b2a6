"""WikiText raw reader: article boundaries, character accounting, packing into blocks, and user errors."""
from __future__ import annotations

import numpy as np
import pytest

from longctx.common import LongctxError, REPO_ROOT
from longctx.data import wikitext

FIXTURES = REPO_ROOT / "tests" / "fixtures"

TEXT = (" \n"
        " = First Article = \n"
        " \n"
        " Some text about the first thing . \n"
        " \n"
        " = = History = = \n"
        " \n"
        " It was built in 1 @,@ 900 . \n"
        " = = = Later = = = \n"
        " More . \n"
        " = E = mc2 ( album ) = \n"
        " \n"
        " An album . \n")


def test_split_articles_at_top_level_headings_only():
    articles = wikitext.split_articles(TEXT)
    assert [a.title for a in articles] == ["First Article", "E = mc2 ( album )"]
    assert [a.line for a in articles] == [2, 11]
    assert "= = History = =" in articles[0].text and "= = = Later = = =" in articles[0].text  # sections stay
    assert articles[0].text.startswith(" \n = First Article = \n")  # the blank preamble joins the first article
    assert "".join(a.text for a in articles) == TEXT  # every character in exactly one article


def test_heading_title():
    assert wikitext.heading_title(" = Homarus gammarus = \n") == "Homarus gammarus"
    assert wikitext.heading_title(" = = Description = = \n") is None
    assert wikitext.heading_title(" = = = Sub = = = ") is None
    assert wikitext.heading_title(" The value = 3 . \n") is None


def test_text_before_the_first_heading_and_text_without_headings():
    articles = wikitext.split_articles(" Preface words . \n = A = \n Body . \n")
    assert [a.title for a in articles] == ["", "A"]
    plain = wikitext.split_articles("just some text\nwithout headings\n")
    assert len(plain) == 1 and plain[0].title == "" and plain[0].text == "just some text\nwithout headings\n"


def test_read_raw_errors_and_newlines(tmp_path):
    with pytest.raises(LongctxError, match=r"missing\.raw: WikiText file not found"):
        wikitext.read_raw(tmp_path / "missing.raw")
    bad = tmp_path / "bad.raw"
    bad.write_bytes(b" = A = \n fine \n caf\xe9 \n")
    with pytest.raises(LongctxError, match=r"bad\.raw: line 3: not UTF-8"):
        wikitext.read_raw(bad)
    crlf = tmp_path / "crlf.raw"
    crlf.write_bytes(b" = A = \r\n text \r\n")
    assert wikitext.read_raw(crlf) == " = A = \n text \n"
    empty = tmp_path / "empty.raw"
    empty.write_text(" \n \n")
    with pytest.raises(LongctxError, match=r"empty\.raw: no text"):
        wikitext.load_articles([str(empty)])


def test_fixture_files():
    for name, n in (("wikitext_train.raw", 10), ("wikitext_valid.raw", 3)):
        path = FIXTURES / name
        text = wikitext.read_raw(path)
        articles = wikitext.split_articles(text, str(path))
        assert len(articles) == n
        assert sum(len(a.text) for a in articles) == len(text)


@pytest.mark.parametrize("name,articles,characters", [("wiki.valid.raw", 60, 1_144_748),
                                                      ("wiki.test.raw", 62, 1_288_556)])
def test_shared_wikitext_articles(shared_file, name, articles, characters):
    path = shared_file(f"wikitext-raw-valid-test/{name}")
    found, label = wikitext.load_articles([str(path)])
    # Counts from ../shared/data/MANIFEST.md: top-level ' = Title = ' lines and characters.
    assert len(found) == articles
    assert sum(len(a.text) for a in found) == characters
    assert found[0].title == ("Homarus gammarus" if name == "wiki.valid.raw" else "Robert Boulter")


def _tokens(lengths: list[int]) -> wikitext.TokenizedArticles:
    ids, start = [], 10
    for n in lengths:
        ids.append(np.arange(start, start + n, dtype=np.int64))
        start += n
    return wikitext.TokenizedArticles(texts=["x" * n for n in lengths], ids=ids, source="t")


def test_concat_packing_fills_blocks_and_marks_boundaries():
    tokens = _tokens([30, 5, 50, 7])
    stream = wikitext.make_stream(tokens, sep_id=2, packing="concat")
    assert len(stream.ids) == 92 + 3 and stream.separator.sum() == 3
    assert stream.n_text_tokens == 92
    assert (stream.ids[stream.separator] == 2).all() and (stream.ids[~stream.separator] != 2).all()
    spans = wikitext.block_spans(stream, block_size=22)  # 20 tokens between cls and sep
    assert [e - s for s, e in spans] == [20, 20, 20, 20, 15]  # only the last block is short
    assert spans[0][0] == 0 and spans[-1][1] == len(stream.ids)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # contiguous, nothing skipped or repeated
    assert wikitext.padding_waste(spans, 22) == pytest.approx(5 / (5 * 22))
    block = wikitext.with_specials(stream.ids[slice(*spans[0])], cls_id=0, sep_id=2)
    assert block[0] == 0 and block[-1] == 2 and len(block) == 22


def test_article_packing_never_crosses_articles():
    tokens = _tokens([30, 5, 50, 7])
    stream = wikitext.make_stream(tokens, sep_id=2, packing="article")
    assert not stream.separator.any()
    spans = wikitext.block_spans(stream, block_size=22)
    bounds = list(zip(stream.starts.tolist(), (stream.starts + stream.lengths).tolist()))
    for s, e in spans:
        assert any(a <= s and e <= b for a, b in bounds)
    assert [e - s for s, e in spans] == [20, 10, 5, 20, 20, 10, 7]
    assert wikitext.padding_waste(spans, 22) > wikitext.padding_waste(
        wikitext.block_spans(wikitext.make_stream(tokens, 2, "concat"), 22), 22)
    with pytest.raises(LongctxError, match="block size 2 leaves no room"):
        wikitext.block_spans(stream, 2)
    with pytest.raises(LongctxError, match="unknown packing"):
        wikitext.make_stream(tokens, 2, "sentences")  # type: ignore[arg-type]


def test_prefix_counts_and_cut_text_characters():
    from longctx.testing import train_tokenizer

    tokenizer = train_tokenizer("roberta", vocab_size=300)
    articles = wikitext.split_articles(TEXT)
    tokens = wikitext.tokenize_articles(articles, tokenizer)
    for text, ids in zip(tokens.texts, tokens.ids):
        assert ids.tolist() == tokenizer(text, add_special_tokens=False)["input_ids"]
    stream = wikitext.make_stream(tokens, tokenizer.sep_token_id, "concat")
    first = len(tokens.ids[0])
    end = first + 1 + 4  # the first article, the separator and 4 tokens of the second
    counts = wikitext.prefix_counts(stream, end)
    assert counts == [first, 4]
    cut = tokens.prefix(counts, tokenizer)
    assert cut.n_tokens == first + 4
    assert cut.texts[0] == tokens.texts[0]
    # The cut text is exactly what its 4 tokens cover: tokenizing it again gives those tokens.
    assert tokenizer(cut.texts[1], add_special_tokens=False)["input_ids"] == tokens.ids[1][:4].tolist()
    assert cut.n_chars == len(tokens.texts[0]) + len(cut.texts[1]) < tokens.n_chars


def test_hub_dataset_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(LongctxError, match=r"wikitext: cannot load Salesforce/wikitext \(wikitext-103-raw-v1\) train"
                                           r".*pass --train-file"):
        wikitext.load_articles(None, "wikitext", split="train")
    assert wikitext.hub_target("wikitext-2-raw-v1") == ("Salesforce/wikitext", "wikitext-2-raw-v1")
    assert wikitext.hub_target("me/wiki:cfg") == ("me/wiki", "cfg")
