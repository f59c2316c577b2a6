"""SQ3/XQ3 construction: offsets, every answer kept, positions varied, determinism, thesis variant."""
from __future__ import annotations

import collections

import pytest

import longctx.data
from longctx.common import LongctxError
from longctx.data.concat import concat, concat_file


def _qa(qid, title, context, answer, impossible=False):
    start = context.index(answer) if answer else None
    answers = {"text": [answer, answer] if answer else [], "answer_start": [start, start] if answer else []}
    return {"id": qid, "title": title, "context": context, "question": f"q {qid}?", "answers": answers,
            "is_impossible": impossible}


def _toy() -> list[dict]:
    """Article A: 4 paragraphs (2 questions on the first), article B: 1 paragraph, article C: 2."""
    ex = [_qa("a0", "A", "Alpha zero is red.", "red"), _qa("a0b", "A", "Alpha zero is red.", "zero"),
          _qa("a1", "A", "Alpha one is blue.", "blue"), _qa("a2", "A", "Alpha two is green.", "green"),
          _qa("a3", "A", "Alpha three is gold.", "gold"), _qa("b0", "B", "Beta is alone here.", "alone"),
          _qa("c0", "C", "Gamma zero is tall.", "tall"), _qa("c1", "C", "Gamma one is short.", "",
                                                                impossible=True)]
    return ex


def _check_offsets(original: list[dict], long: list[dict]) -> None:
    assert [e["id"] for e in long] == [e["id"] for e in original]
    for old, new in zip(original, long):
        assert old["context"] in new["context"]
        assert new["is_impossible"] == old["is_impossible"]
        assert new["answers"]["text"] == old["answers"]["text"]
        assert len(new["answers"]["answer_start"]) == len(old["answers"]["answer_start"])
        for text, start in zip(new["answers"]["text"], new["answers"]["answer_start"]):
            assert new["context"][start:start + len(text)] == text


def _slot(old: dict, new: dict, k: int, sep: str) -> int:
    offset = new["context"].index(old["context"])
    if offset == 0:
        return 0
    return k - 1 if new["context"].endswith(old["context"]) else 1


def test_exported_as_longctx_data_concat():
    assert longctx.data.concat is concat


@pytest.mark.parametrize("distractors", ["neighbours", "random"])
def test_offsets_and_answers_on_toy_data(distractors):
    ex = _toy()
    out = concat(ex, k=3, distractors=distractors, seed=3)
    _check_offsets(ex, out)
    for new in out:
        assert new["context"].count("\n\n") == 2  # three paragraphs, two separators
    # Questions of one paragraph share one long context.
    assert out[0]["context"] == out[1]["context"]
    # Impossible stays impossible, with no answers.
    assert out[-1]["is_impossible"] and out[-1]["answers"] == {"text": [], "answer_start": []}
    # Input untouched.
    assert ex == _toy()


def test_neighbours_are_nearest_paragraphs_then_next_articles():
    ex = _toy()
    out = {e["id"]: e["context"].split("\n\n") for e in concat(ex, k=3, seed=0)}
    assert set(out["a0"]) == {"Alpha zero is red.", "Alpha one is blue.", "Alpha two is green."}
    assert set(out["a2"]) == {"Alpha one is blue.", "Alpha two is green.", "Alpha three is gold."}
    # B has one paragraph: the fill-ins come from the following article (C), in document order.
    assert set(out["b0"]) == {"Beta is alone here.", "Gamma zero is tall.", "Gamma one is short."}
    # C has two: one neighbour, then the following article wraps around to A.
    assert set(out["c0"]) == {"Gamma zero is tall.", "Gamma one is short.", "Alpha zero is red."}
    # Distractors keep their document order around the gold paragraph.
    order = ["Alpha zero is red.", "Alpha one is blue.", "Alpha two is green.", "Alpha three is gold."]
    for qid, parts in out.items():
        gold = next(e["context"] for e in ex if e["id"] == qid)
        others = [p for p in parts if p in order and p != gold]
        assert others == sorted(others, key=order.index)


def test_deterministic_by_seed_and_k1_identity():
    ex = _toy()
    assert concat(ex, k=3, seed=5) == concat(ex, k=3, seed=5)
    assert concat(ex, k=3, distractors="random", seed=5) == concat(ex, k=3, distractors="random", seed=5)
    assert any(concat(ex, k=3, seed=s) != concat(ex, k=3, seed=5) for s in range(6, 12))
    assert concat(ex, k=1) == ex
    assert concat(ex, k=1, distractors="random", seed=9) == ex


def test_thesis_variant_and_errors():
    ex = _toy()
    thesis = concat(ex, k=2, separator="", questions="first", seed=1)
    assert [e["id"] for e in thesis] == ["a0", "a1", "a2", "a3", "b0", "c0", "c1"]
    _check_offsets([e for e in ex if e["id"] != "a0b"], thesis)
    assert all("\n\n" not in e["context"] for e in thesis)
    with pytest.raises(LongctxError, match="needs at least 9 distinct paragraphs"):
        concat(ex, k=9)
    with pytest.raises(LongctxError, match="k must be at least 1"):
        concat(ex, k=0)
    with pytest.raises(LongctxError, match="distractors"):
        concat(ex, distractors="nearby")


def test_concat_file_round_trip(tmp_path):
    from longctx.data.squad import load_squad, write_squad

    write_squad(_toy(), tmp_path / "toy.json", "2.0")
    manifest = concat_file(str(tmp_path / "toy.json"), tmp_path / "toy3.json", k=3, seed=2)
    assert manifest["questions_out"] == 8 and manifest["version"] == "2.0" and len(manifest["source_sha256"]) == 64
    back = load_squad(str(tmp_path / "toy3.json"))
    assert back.version == "2.0"
    by_id = {e["id"]: e for e in back.examples}
    for e in concat(load_squad(str(tmp_path / "toy.json")).examples, k=3, seed=2):
        assert by_id[e["id"]]["context"] == e["context"]
        assert by_id[e["id"]]["answers"] == e["answers"]


@pytest.mark.shared
@pytest.mark.parametrize("distractors", ["neighbours", "random"])
def test_squad_dev_every_answer_at_its_shifted_offset(shared_file, distractors):
    from longctx.data.squad import load_squad

    dev = load_squad(str(shared_file("squad-v1.1/dev-v1.1.json"))).examples
    out = concat(dev, k=3, distractors=distractors, seed=42)
    _check_offsets(dev, out)
    assert sum(len(e["answers"]["text"]) for e in out) == 34726
    # The gold paragraph's slot varies, roughly uniformly over the 3 slots (2,067 paragraphs).
    slots = collections.Counter()
    seen = set()
    for old, new in zip(dev, out):
        if old["context"] not in seen:
            seen.add(old["context"])
            slots[_slot(old, new, 3, "\n\n")] += 1
    assert set(slots) == {0, 1, 2}
    assert all(count > 0.25 * len(seen) for count in slots.values()), slots
    assert concat(dev[:500], k=3, distractors=distractors, seed=42) == concat(dev[:500], k=3,
                                                                           distractors=distractors, seed=42)


@pytest.mark.shared
def test_squad_v2_impossible_questions_stay_impossible(shared_file):
    from longctx.data.squad import load_squad

    dev = load_squad(str(shared_file("squad-v2.0-explorer-derived/dev-v2.0.explorer-derived.json"))).examples
    out = concat(dev, k=3, seed=0)
    _check_offsets(dev, out)
    assert sum(e["is_impossible"] for e in out) == sum(e["is_impossible"] for e in dev) > 0


@pytest.mark.shared
def test_xq3_is_parallel_across_languages(shared_file):
    """Same paragraphs in the same order in every XQuAD language -> same distractors and gold slots."""
    from longctx.data.squad import load_squad

    layout = {}
    for lang in ("en", "de"):
        xquad = load_squad(str(shared_file(f"xquad/xquad.{lang}.json"))).examples
        contexts = list(dict.fromkeys(e["context"] for e in xquad))
        out = concat(xquad, k=3, seed=0)
        _check_offsets(xquad, out)
        # Each long context as the sequence of paragraph indices it is made of.
        layout[lang] = {e["id"]: tuple(contexts.index(p) for p in e["context"].split("\n\n")) for e in out}
    assert layout["en"] == layout["de"]


@pytest.mark.parametrize("distractors", ["neighbours", "random"])
def test_gold_position_pins_the_slot_and_keeps_the_distractors(distractors):
    ex = _toy()
    drawn = concat(ex, k=3, distractors=distractors, seed=4)
    for position, slot in (("first", 0), ("middle", 1), ("last", 2)):
        pinned = concat(ex, k=3, distractors=distractors, seed=4, gold_position=position)
        _check_offsets(ex, pinned)
        for old, new, free in zip(ex, pinned, drawn):
            assert new["context"].split("\n\n")[slot] == old["context"], (position, new["context"])
            # the same seed draws the same distractors whatever the gold position
            assert set(new["context"].split("\n\n")) == set(free["context"].split("\n\n"))
    assert concat(ex, k=3, distractors=distractors, seed=4, gold_position="random") == drawn
    assert len({_slot(o, n, 3, "\n\n") for o, n in zip(ex, drawn)}) > 1  # random really varies the slot
    with pytest.raises(LongctxError, match="gold_position must be one of random, first, middle, last"):
        concat(ex, gold_position="centre")


def test_concat_verb_builds_a_file_from_the_command_line(tmp_path, capsys, monkeypatch):
    from longctx.cli import main
    from longctx.config import VERBS
    from longctx.data.concat import concat_dataset
    from longctx.data.squad import load_squad, write_squad

    monkeypatch.chdir(tmp_path)  # main() loads ./.env: not the checkout's
    assert VERBS["concat"] == "longctx.data.concat:concat_dataset"
    write_squad(_toy(), tmp_path / "toy.json", "2.0")
    out = tmp_path / "toy3.json"
    argv = ["concat", "--data", str(tmp_path / "toy.json"), "--k", "3", "--distractors", "random",
            "--gold-position", "last", "--seed", "7", "--out", str(out)]
    assert main(argv) == 0
    built = load_squad(str(out))
    assert built.version == "2.0"
    expected = concat(load_squad(str(tmp_path / "toy.json")).examples, k=3, distractors="random", seed=7,
                      gold_position="last")
    assert {e["id"]: e["context"] for e in built.examples} == {e["id"]: e["context"] for e in expected}

    # an existing file is not overwritten without --force; a folder is refused; errors are one line
    before = out.read_bytes()
    assert main(argv[:-4] + ["--seed", "8", "--out", str(out)]) == 2
    assert "exists (pass --force to overwrite)" in capsys.readouterr().err and out.read_bytes() == before
    assert main(argv[:-4] + ["--seed", "8", "--out", str(out), "--force"]) == 0
    assert out.read_bytes() != before
    assert main(argv[:-2] + ["--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["concat", "--data", str(tmp_path / "missing.json"), "--out", str(tmp_path / "m.json")]) == 2
    err = capsys.readouterr().err
    assert "missing.json" in err and len(err.strip().splitlines()) == 1
    manifest = concat_dataset(data=str(tmp_path / "toy.json"), out=str(tmp_path / "t.json"), k=2, seed=1)
    assert manifest["gold_position"] == "random" and manifest["questions_out"] == 8
