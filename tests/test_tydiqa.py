"""TyDi QA GoldP: reading (language from the id), per-language scoring and the average without English,
through the metric chooser, `longctx score --format tydiqa` and `longctx evaluate` (auto-detected)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from longctx.cli import main
from longctx.common import REPO_ROOT, LongctxError
from longctx.data import tydiqa
from longctx.data.squad import load_squad, write_squad
from longctx.qa.metrics import compute_metrics

DEV = REPO_ROOT / "tests" / "fixtures" / "tydiqa" / "tydiqa-goldp-v1.1-dev.json"

# Predictions for the fixture, and their scores worked out by hand (SQuAD 1.1 normalisation per language).
PREDICTIONS = {
    "english-1001-0": "Mediterranean Sea",  # gold "the Mediterranean Sea": the article goes -> exact
    "english-1002-0": "Tanzania",  # exact
    "finnish-2001-0": "Turussa",  # exact
    "finnish-2002-0": "yliopisto",  # gold "Helsingin yliopisto": P 1, R 1/2 -> F1 2/3
    "indonesian-3001-0": "Jakarta",  # exact
    "indonesian-3002-0": "Sumatra",  # gold "Pulau Jawa": 0
    # indonesian-3003-0: no prediction -> 0
    "arabic-4001-0": "القاهرة",  # exact
    "arabic-4002-0": "نهر النيل،",  # the Arabic comma is not ASCII punctuation: kept, so F1 1/2, EM 0
}
BY_LANGUAGE = {  # (EM, F1) as fractions
    "english": (2 / 2, 2 / 2),
    "finnish": (1 / 2, (1 + 2 / 3) / 2),
    "indonesian": (1 / 3, 1 / 3),
    "arabic": (1 / 2, (1 + 1 / 2) / 2),
}


def test_language_comes_from_the_id_prefix():
    assert tydiqa.language("arabic-2387335860751143628-1") == "arabic"
    assert tydiqa.language("english--4441213-0-1") == "english"  # older copies: a double dash
    for qid in ("56be4db0acb8001400a502ec", "thai-1-0", "arabic", "Arabic-1-0", "french-1-0"):
        assert tydiqa.language(qid) is None, qid
    assert tydiqa.is_goldp([{"id": "korean-1-0"}, {"id": "telugu-2-0"}])
    assert not tydiqa.is_goldp([{"id": "korean-1-0"}, {"id": "q1"}]) and not tydiqa.is_goldp([])


def test_reader_checks_the_ids_and_answerability(tmp_path):
    data = tydiqa.load_tydiqa(str(DEV))
    assert len(data) == 9 and data.version == "1.1"
    assert {lang: len(g) for lang, g in tydiqa.by_language(data.examples).items()} == {
        "arabic": 2, "english": 2, "finnish": 2, "indonesian": 3}
    renamed = [dict(ex, id="q-7") if ex["id"] == "finnish-2002-0" else ex for ex in data.examples]
    write_squad(renamed, tmp_path / "bad-id.json")
    with pytest.raises(LongctxError, match=r"bad-id\.json: question q-7: the id does not start with a TyDi QA "
                                           r"GoldP language"):
        tydiqa.load_tydiqa(str(tmp_path / "bad-id.json"))
    unanswerable = [dict(ex, answers={"text": [], "answer_start": []}, is_impossible=True)
                    if ex["id"] == "arabic-4001-0" else ex for ex in data.examples]
    write_squad(unanswerable, tmp_path / "v2.json", "2.0")
    with pytest.raises(LongctxError, match="TyDi QA GoldP is SQuAD 1.1 layout with answerable questions only"):
        tydiqa.load_tydiqa(str(tmp_path / "v2.json"))


def _expected() -> dict:
    non_english = [lang for lang in BY_LANGUAGE if lang != "english"]
    n = {"english": 2, "finnish": 2, "indonesian": 3, "arabic": 2}
    overall_em = sum(BY_LANGUAGE[lang][0] * n[lang] for lang in n) / 9  # 5/9
    overall_f1 = sum(BY_LANGUAGE[lang][1] * n[lang] for lang in n) / 9  # (2 + 5/3 + 1 + 3/2)/9
    return {"exact_match": 100 * sum(BY_LANGUAGE[lang][0] for lang in non_english) / 3,
            "f1": 100 * sum(BY_LANGUAGE[lang][1] for lang in non_english) / 3,
            "overall_exact_match": 100 * overall_em, "overall_f1": 100 * overall_f1, "total": 9,
            "by_language": {lang: {"exact_match": 100 * em, "f1": 100 * f1, "total": n[lang]}
                            for lang, (em, f1) in BY_LANGUAGE.items()}}


def _assert_scores(result: dict) -> None:
    expected = _expected()
    assert result["exact_match"] == pytest.approx(100 * (1 / 2 + 1 / 3 + 1 / 2) / 3)  # 44.44, English left out
    assert result["f1"] == pytest.approx(100 * (5 / 6 + 1 / 3 + 3 / 4) / 3)  # 63.89
    assert result["overall_exact_match"] == pytest.approx(100 * 5 / 9)
    assert result["overall_f1"] == pytest.approx(100 * (2 + 5 / 3 + 1 + 3 / 2) / 9)
    assert set(result["languages_averaged"]) == {"arabic", "finnish", "indonesian"}
    assert result["total"] == 9
    assert set(result["by_language"]) == set(expected["by_language"])
    for lang, figures in expected["by_language"].items():
        assert result["by_language"][lang] == pytest.approx(figures), lang
    for key in ("exact_match", "f1", "overall_exact_match", "overall_f1"):
        assert result[key] == pytest.approx(expected[key]), key


def test_per_language_scores_and_the_average_without_english(warnings):
    examples = load_squad(str(DEV)).examples
    explicit = compute_metrics(PREDICTIONS, format="tydiqa", examples=examples, version="1.1")
    _assert_scores(explicit)
    # SQuAD-format data whose ids carry GoldP languages (what finetune/evaluate pass) gets the same figures.
    assert compute_metrics(PREDICTIONS, examples=examples, version="1.1") == explicit
    assert any("indonesian-3003-0" in r.getMessage() for r in warnings.records)  # the missing prediction


def test_only_tydi_ids_switch_and_wrong_options_are_one_line():
    examples = load_squad(str(DEV)).examples
    plain = [dict(ex, id=f"q{i}") for i, ex in enumerate(examples)]
    preds = {f"q{i}": PREDICTIONS.get(ex["id"], "") for i, ex in enumerate(examples)}
    squad = compute_metrics(preds, examples=plain, version="1.1")
    assert set(squad) == {"exact_match", "f1"}  # ordinary SQuAD 1.1 figures
    assert squad["exact_match"] == pytest.approx(_expected()["overall_exact_match"])
    with pytest.raises(LongctxError, match="question q0: the id does not start with a TyDi QA GoldP language"):
        compute_metrics(preds, format="tydiqa", examples=plain, version="1.1")
    with pytest.raises(LongctxError, match="lang and na_probs do not apply to TyDi QA GoldP"):
        compute_metrics(PREDICTIONS, examples=examples, version="1.1", lang="ar")


def test_english_only_averages_english_with_a_warning(warnings):
    english = [ex for ex in load_squad(str(DEV)).examples if ex["id"].startswith("english")]
    result = compute_metrics(PREDICTIONS, examples=english, version="1.1")
    assert result["languages_averaged"] == ["english"] and result["f1"] == result["overall_f1"] == 100.0
    assert any("only English questions" in r.getMessage() for r in warnings.records)


def test_score_verb_prints_the_tydi_figures(tmp_path, capsys):
    preds = tmp_path / "predictions.json"
    preds.write_text(json.dumps(PREDICTIONS, ensure_ascii=False), encoding="utf-8")
    assert main(["score", "--format", "tydiqa", "--data", str(DEV), "--predictions", str(preds)]) == 0
    _assert_scores(json.loads(capsys.readouterr().out))
    out = subprocess.run([sys.executable, "-m", "longctx", "score", "--format", "tydiqa", "--data",
                          str(REPO_ROOT / "tests" / "fixtures" / "metrics_dev_v1.json"), "--predictions", str(preds)],
                         check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "question q1: the id does not start with a TyDi QA GoldP language" in out.stderr


def test_evaluate_reports_per_language_figures(tiny_encoder_dir, tmp_path):
    """`longctx evaluate` on GoldP data (format squad, the default) writes the TyDi figures."""
    from longctx.finetune import evaluate

    model = tiny_encoder_dir("xlm-roberta", max_positions=128)
    result = evaluate(model=str(model), data=str(DEV), out=str(tmp_path / "eval"), max_length=96, doc_stride=32,
                      per_device_eval_batch_size=8, precision="fp32")
    ev = json.loads((tmp_path / "eval" / "metrics.json").read_text())["eval"]
    assert ev["f1"] == result["f1"]
    assert set(ev["by_language"]) == {"arabic", "english", "finnish", "indonesian"}
    assert ev["languages_averaged"] == ["arabic", "finnish", "indonesian"] and ev["total"] == 9
    assert ev["f1"] == pytest.approx(sum(ev["by_language"][g]["f1"] for g in ev["languages_averaged"]) / 3)


def test_thesis_matrix_has_tydiqa_beside_xquad():
    import yaml

    recipe = yaml.safe_load((REPO_ROOT / "experiments" / "thesis.yaml").read_text())
    tydi, xquad = recipe["datasets"]["tydiqa"], recipe["datasets"]["xquad"]
    assert tydi["model_from"] == xquad["model_from"] == "squad" and tydi["models"] == xquad["models"]
    assert tydi["eval_file"].endswith("/tydiqa/tydiqa-goldp-v1.1-dev.json")


@pytest.mark.parametrize("verb", ["finetune", "evaluate"])
def test_lang_on_tydi_data_is_refused_before_any_model_work(verb, tmp_path):
    import subprocess
    import sys

    data = ["--eval-file", str(DEV), "--out", str(tmp_path / "run")] if verb == "finetune" else \
        ["--data", str(DEV), "--out", str(tmp_path / "run")]
    proc = subprocess.run([sys.executable, "-m", "longctx", verb, "--model", str(tmp_path / "no-such-model"),
                           "--lang", "ar", *data], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and f"{DEV}: TyDi QA GoldP data: lang does not apply" in proc.stderr
    assert not (tmp_path / "run").exists()
