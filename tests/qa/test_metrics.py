"""SQuAD / MLQA metrics on hand-made cases whose expected figures are worked out by hand in comments."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest

from longctx.common import LongctxError
from longctx.qa.metrics import compute_metrics, normalize_answer, score, squad_v1, squad_v2

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def ex(qid: str, *answers: str, impossible: bool = False) -> dict:
    return {"id": qid, "title": "t", "context": "c", "question": "q?", "is_impossible": impossible,
            "answers": {"text": list(answers), "answer_start": [0] * len(answers)}}


# --- normalisation -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("The Beatles", "beatles"),
    ("a theatre and AN apple", "theatre and apple"),  # articles are whole words only
    ("U.S.A.", "usa"),
    ("rock-and-roll!", "rockandroll"),
    ("  Café   Müller  ", "café müller"),  # accents are kept, whitespace collapsed
    ("“Hello” — world", "“hello” — world"),  # SQuAD drops ASCII punctuation only
    ("the", ""),
])
def test_squad_normalisation(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize("lang, text, expected", [
    ("en", "“The Great” Gatsby—novel", "great gatsbynovel"),  # Unicode punctuation goes too
    ("es", "El Niño y la Niña", "niño y niña"),
    ("es", "Los Ángeles, unas casas", "ángeles casas"),
    ("es", "lo mejor", "lo mejor"),  # 'lo' is not in MLQA's Spanish list
    ("de", "Die Hauptstadt der Bundesrepublik", "hauptstadt bundesrepublik"),
    ("de", "Das ist eine Stadt; einer von vielen.", "ist stadt von vielen"),
    ("zh", "北京大学，Peking University 2024年", "北 京 大 学 peking university 2024 年"),
    ("ar", "الكتاب", "كتاب"),
    ("vi", "cái bàn", "bàn"),
    ("hi", "भारत।", "भारत"),  # Devanagari danda is punctuation; Hindi has no articles
])
def test_mlqa_normalisation(lang, text, expected):
    assert normalize_answer(text, lang) == expected


def test_unknown_language_is_refused():
    with pytest.raises(LongctxError, match="unknown answer language 'xx'"):
        normalize_answer("text", "xx")


# --- SQuAD 1.1 -----------------------------------------------------------------------------------

def test_v1_takes_the_best_gold_answer():
    examples = [ex("q1", "Denver Broncos", "the Broncos", "Broncos"), ex("q2", "Denver Broncos")]
    # q1: "Broncos" matches the third gold exactly. q2: "denver" vs "denver broncos": P=1, R=1/2, F1=2/3.
    result = squad_v1(examples, {"q1": "Broncos", "q2": "Denver"})
    assert result == {"exact_match": 50.0, "f1": pytest.approx(100 * (1 + 2 / 3) / 2)}


def test_v1_unicode_and_punctuation():
    examples = [ex("q1", "Café Müller"), ex("q2", "São Paulo, Brazil")]
    # q1: accents are not folded -> no shared token. q2: "são paulo brazil" vs "são paulo": P=1, R=2/3, F1=0.8.
    result = squad_v1(examples, {"q1": "cafe muller", "q2": "São Paulo!"})
    assert result == {"exact_match": 0.0, "f1": pytest.approx(100 * 0.8 / 2)}


def test_v1_missing_predictions_score_zero_with_a_warning(warnings):
    result = squad_v1([ex("q1", "Paris"), ex("q2", "Rome"), ex("q3", "Oslo")], {"q1": "paris"})
    assert result == {"exact_match": pytest.approx(100 / 3), "f1": pytest.approx(100 / 3)}
    assert "2 of 3 questions have no prediction" in warnings.text and "q2, q3" in warnings.text


def test_v1_mlqa_chinese_is_scored_per_character():
    examples = [ex("q1", "北京大学")]
    # Characters: pred 北 京 vs gold 北 京 大 学: P=1, R=1/2, F1=2/3. SQuAD rules see one token each -> 0.
    assert squad_v1(examples, {"q1": "北京"}, lang="zh")["f1"] == pytest.approx(100 * 2 / 3)
    assert squad_v1(examples, {"q1": "北京"})["f1"] == 0.0


def test_v1_mlqa_german_articles():
    examples = [ex("q1", "der Rhein")]
    assert squad_v1(examples, {"q1": "Rhein"}, lang="de") == {"exact_match": 100.0, "f1": 100.0}
    assert squad_v1(examples, {"q1": "Rhein"}) == {"exact_match": 0.0, "f1": pytest.approx(100 * 2 / 3)}


# --- SQuAD 2.0 -----------------------------------------------------------------------------------

V2_EXAMPLES = [ex("a1", "Paris"), ex("a2", "The Eiffel Tower"),
               ex("n1", impossible=True), ex("n2", impossible=True)]
V2_PREDICTIONS = {"a1": "Paris", "a2": "Eiffel", "n1": "", "n2": "Lyon"}
NA_PROBS = {"a1": 0.1, "a2": 0.6, "n1": 0.3, "n2": 0.8}


def test_v2_answerable_and_unanswerable():
    # a1 exact (1, 1); a2 "eiffel" vs "eiffel tower" (0, 2/3); n1 "" on no-answer (1, 1); n2 "lyon" (0, 0).
    result = squad_v2(V2_EXAMPLES, V2_PREDICTIONS)
    assert list(result) == ["exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total",
                            "NoAns_exact", "NoAns_f1", "NoAns_total"]
    assert result["exact"] == 50.0 and result["total"] == 4
    assert result["f1"] == pytest.approx(100 * (1 + 2 / 3 + 1) / 4)
    assert result["HasAns_exact"] == 50.0 and result["HasAns_f1"] == pytest.approx(100 * (5 / 3) / 2)
    assert (result["NoAns_exact"], result["NoAns_f1"], result["NoAns_total"]) == (50.0, 50.0, 2)


def test_v2_empty_predictions_and_empty_golds():
    examples = [ex("a", "Paris"), ex("n", impossible=True), ex("d", "the", "The Louvre")]
    # a: "" on an answerable question scores 0. n: "the" normalises to "" = the no-answer gold -> 1.
    # d: gold "the" normalises to "" and is dropped, so only "louvre" counts -> "louvre" scores 1.
    result = squad_v2(examples, {"a": "", "n": "the", "d": "Louvre"})
    assert (result["exact"], result["f1"]) == (pytest.approx(200 / 3), pytest.approx(200 / 3))
    assert squad_v2([ex("d", "the")], {"d": ""})["exact"] == 100.0  # only "" golds: treated as no-answer


def test_v2_subsets_are_left_out_when_empty():
    result = squad_v2([ex("a", "Paris")], {"a": "Paris"})
    assert list(result) == ["exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total"]


def test_v2_best_threshold():
    # Start with everything thresholded to "no answer": 2 of 4 right. Let questions through by na_prob:
    # exact: a1 (0.1) +1 -> 3 (best, thresh 0.1), n1 +0, a2 +0, n2 "Lyon" -1  -> best 75.0 at 0.1
    # f1:    a1 +1 -> 3, n1 +0, a2 +2/3 -> 3.67 (best, thresh 0.6), n2 -1      -> best 91.67 at 0.6
    result = squad_v2(V2_EXAMPLES, V2_PREDICTIONS, NA_PROBS)
    assert (result["best_exact"], result["best_exact_thresh"]) == (75.0, 0.1)
    assert result["best_f1"] == pytest.approx(100 * (3 + 2 / 3) / 4) and result["best_f1_thresh"] == 0.6
    assert result["exact"] == 50.0  # the default threshold 1.0 changes nothing


def test_v2_no_answer_threshold():
    # thresh 0.5: a2 (0.6) becomes "no answer" -> 0; n2 (0.8) becomes "no answer" -> 1.
    result = squad_v2(V2_EXAMPLES, V2_PREDICTIONS, NA_PROBS, na_prob_thresh=0.5)
    assert (result["exact"], result["f1"]) == (75.0, 75.0)
    assert (result["HasAns_exact"], result["NoAns_exact"]) == (50.0, 100.0)


def test_v2_missing_predictions_score_zero(warnings):
    # n1 missing scores 0 (not 1 as an empty answer would); it still counts in every total.
    predictions = {"a1": "Paris", "a2": "Eiffel", "n2": ""}
    result = squad_v2(V2_EXAMPLES, predictions, NA_PROBS)
    assert (result["total"], result["NoAns_total"], result["NoAns_exact"]) == (4, 2, 50.0)
    assert result["exact"] == 50.0
    # best exact: start with n2 right (1), a1 +1 -> 2, a2 +0, n2 "" +0 -> 2 of 4 at 0.1.
    assert (result["best_exact"], result["best_exact_thresh"]) == (50.0, 0.1)
    assert "1 of 4 questions have no prediction" in warnings.text and "n1" in warnings.text


def test_v2_na_probs_must_cover_predictions():
    with pytest.raises(LongctxError, match="no entry for question n2"):
        squad_v2(V2_EXAMPLES, V2_PREDICTIONS, {"a1": 0.1, "a2": 0.6, "n1": 0.3})


# --- the score verb and the CLI ------------------------------------------------------------------

def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "longctx", "score", *args], capture_output=True, text=True,
                          timeout=120)


def test_cli_v1_prints_the_official_json():
    out = run_cli("--data", str(FIXTURES / "metrics_dev_v1.json"),
                  "--predictions", str(FIXTURES / "metrics_predictions_v1.json"))
    assert out.returncode == 0, out.stderr
    # q1 "broncos!" exact; q2 "carolina" vs "carolina panthers" F1 2/3; q3 missing -> 0.
    expected = {"exact_match": 100.0 * 1 / 3, "f1": 100.0 * (1 + 2 / 3) / 3}
    assert out.stdout == json.dumps(expected) + "\n"
    assert "1 of 3 questions have no prediction" in out.stderr and "q3" in out.stderr


def test_cli_v2_prints_the_official_json():
    out = run_cli("--data", str(FIXTURES / "metrics_dev_v2.json"),
                  "--predictions", str(FIXTURES / "metrics_predictions_v2.json"),
                  "--na-probs", str(FIXTURES / "metrics_na_probs_v2.json"))
    assert out.returncode == 0, out.stderr
    expected = OrderedDict([
        ("exact", 50.0), ("f1", 100.0 * (1 + 2 / 3 + 1 + 0) / 4), ("total", 4),
        ("HasAns_exact", 50.0), ("HasAns_f1", 100.0 * (1 + 2 / 3) / 2), ("HasAns_total", 2),
        ("NoAns_exact", 50.0), ("NoAns_f1", 50.0), ("NoAns_total", 2),
        ("best_exact", 75.0), ("best_exact_thresh", 0.1),
        ("best_f1", 100.0 * (2 + 1 + 0 + 2 / 3) / 4), ("best_f1_thresh", 0.6)])
    assert out.stdout == json.dumps(expected, indent=2) + "\n"


def test_cli_bad_predictions_file_is_one_line():
    bad = FIXTURES / "metrics_bad_predictions.json"
    out = run_cli("--data", str(FIXTURES / "metrics_dev_v1.json"), "--predictions", str(bad))
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr
    assert str(bad) in lines[0] and "question q2" in lines[0]


def test_score_rejects_na_probs_for_v1_and_predictions_not_an_object(tmp_path):
    listed = tmp_path / "list.json"
    listed.write_text('["Broncos"]')
    with pytest.raises(LongctxError, match="list.json: predictions must be a JSON object"):
        score(data=str(FIXTURES / "metrics_dev_v1.json"), predictions=str(listed))
    with pytest.raises(LongctxError, match="need SQuAD 2.0 data"):
        score(data=str(FIXTURES / "metrics_dev_v1.json"), predictions=str(FIXTURES / "metrics_predictions_v1.json"),
              na_probs=str(FIXTURES / "metrics_na_probs_v2.json"))


def test_score_returns_and_prints(capsys):
    result = score(data=str(FIXTURES / "metrics_dev_v2.json"),
                   predictions=str(FIXTURES / "metrics_predictions_v2.json"))
    assert json.loads(capsys.readouterr().out) == result
    assert "best_exact" not in result


# --- real data -----------------------------------------------------------------------------------

def test_squad_dev_gold_and_wrong_predictions(shared_file):
    from longctx.data.squad import load_squad

    examples = load_squad(str(shared_file("squad-v1.1/dev-v1.1.json"))).examples
    gold = {e["id"]: e["answers"]["text"][0] for e in examples}
    assert squad_v1(examples, gold) == {"exact_match": 100.0, "f1": 100.0}
    # Each question gets the first answer of the next question (often in another paragraph).
    shifted = {e["id"]: examples[(i + 1) % len(examples)]["answers"]["text"][0] for i, e in enumerate(examples)}
    wrong = squad_v1(examples, shifted)
    assert wrong["exact_match"] < 5 and wrong["f1"] < 15


def test_squad_v2_dev_gold(shared_file):
    from longctx.data.squad import load_squad

    examples = load_squad(str(shared_file("squad-v2.0-explorer-derived/dev-v2.0.explorer-derived.json"))).examples
    gold = {e["id"]: (e["answers"]["text"] or [""])[0] for e in examples}
    result = squad_v2(examples, gold)
    assert (result["exact"], result["f1"], result["HasAns_total"], result["NoAns_total"]) == (100.0, 100.0, 5928, 5945)
    empty = squad_v2(examples, {e["id"]: "" for e in examples})
    assert empty["exact"] == pytest.approx(100 * 5945 / 11873) and empty["HasAns_f1"] == 0.0


# --- the one metric chooser (finetune, seq2seq, sweep and score all go through it) ---------------

def test_chooser_squad_version_decides_v1_or_v2():
    examples = [ex("q1", "Paris"), ex("q2", "the Eiffel Tower")]
    predictions = {"q1": "Paris", "q2": ""}
    v1 = compute_metrics(predictions, examples=examples, version="1.1")
    assert v1 == {"exact_match": 50.0, "f1": 50.0}
    # The same answerable questions under version 2.0 get the v2 figures (exact/f1/total/HasAns).
    v2 = compute_metrics(predictions, examples=examples, version="v2.0")
    assert (v2["exact"], v2["total"], v2["HasAns_total"]) == (50.0, 2, 2) and "NoAns_total" not in v2
    # An unanswerable question makes it v2 whatever the version field says.
    mixed = examples + [ex("n1", impossible=True)]
    v2 = compute_metrics({**predictions, "n1": ""}, examples=mixed, version="1.1")
    assert (v2["exact"], v2["NoAns_exact"]) == (pytest.approx(200 / 3), 100.0)
    with pytest.raises(LongctxError, match="need SQuAD 2.0 data"):
        compute_metrics(predictions, examples=examples, version="1.1", na_probs={"q1": 0.1, "q2": 0.2})


def test_chooser_lang_selects_mlqa_normalisation():
    # German articles only go with lang="de": "die Donau" vs "Donau" is exact under MLQA-de, F1 2/3 under SQuAD.
    examples = [ex("q1", "Donau")]
    assert compute_metrics({"q1": "die Donau"}, examples=examples, version="1.1") == \
        {"exact_match": 0.0, "f1": pytest.approx(100 * 2 / 3)}
    assert compute_metrics({"q1": "die Donau"}, examples=examples, version="1.1", lang="de") == \
        {"exact_match": 100.0, "f1": 100.0}
    with pytest.raises(LongctxError, match="unknown answer language 'xx'"):
        compute_metrics({"q1": "Donau"}, examples=examples, lang="xx")


def test_chooser_triviaqa_scores_against_the_qa_file():
    qa = FIXTURES / "triviaqa" / "qa" / "wikipedia-dev.json"
    gold = json.loads(qa.read_text(encoding="utf-8"))
    qids = [d["QuestionId"] for d in gold["Data"]]
    result = compute_metrics({qids[0]: "United States"}, format="triviaqa",
                             triviaqa_gold=str(qa))
    assert (result["denominator"], result["common"]) == (len(qids), 1)
    assert result["exact_match"] == pytest.approx(100 / len(qids)) and set(result["domains"]) == {"Wikipedia"}
    with pytest.raises(LongctxError, match="not TriviaQA"):
        compute_metrics({}, format="triviaqa", triviaqa_gold=str(qa), lang="de")
    with pytest.raises(LongctxError, match="unknown data format 'nq'"):
        compute_metrics({}, format="nq", examples=[])
