"""TriviaQA rc: the reader (official layout and hub configs), alias spans, truncation and the official metric.

The fixture in tests/fixtures/triviaqa follows the official layout: qa/wikipedia-dev.json (2 questions),
qa/web-dev.json (1 question with an entity page and 2 search results), evidence/wikipedia and evidence/web.
The expected scores below were computed by hand and agree with the official triviaqa_evaluation.py
run on the same files (for the keys it understands).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from longctx.common import LongctxError
from longctx.config import load_recipe
from longctx.data.triviaqa import find_answer_spans, read_triviaqa, truncate, write_triviaqa_squad
from longctx.data.triviaqa_answers import normalize_answer
from longctx.qa.metrics import score
from longctx.qa.triviaqa_metrics import evaluate_triviaqa

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "triviaqa"
WIKI = FIXTURE / "qa" / "wikipedia-dev.json"
WEB = FIXTURE / "qa" / "web-dev.json"
RECIPES = Path(__file__).resolve().parents[2] / "experiments" / "triviaqa"


@pytest.fixture(scope="module")
def tiny_tokenizer():
    from longctx.testing import train_tokenizer

    return train_tokenizer("roberta")


def _texts(context: str, spans) -> list[str]:
    return [context[s:e] for s, e in spans]


def _write(path: Path, obj) -> str:
    path.write_text(json.dumps(obj) if not isinstance(obj, str) else obj, encoding="utf-8")
    return str(path)


# --------------------------------------------------------------------------------- alias spans

def test_normalize_matches_official_rules():
    assert normalize_answer("The U.S.A.") == "u s"  # the final "a" is an article once the dots are gone
    assert normalize_answer("  The_Beatles’ ") == "beatles"
    assert normalize_answer("Sunset Blvd.") == "sunset blvd"
    assert normalize_answer("A-Team") == "team"


def test_alias_spans_case_punctuation_and_word_boundaries():
    text = "The U.S.A. (or usa) is big; the USA's flag. Usability is not usa-related. The Beatles' song, THE BEATLES!"
    spans = find_answer_spans(text, ["u s a", "usa", "beatles"])
    assert _texts(text, spans) == ["U.S.A", "usa", "USA", "usa", "Beatles", "BEATLES"]
    for s, e in spans:
        assert normalize_answer(text[s:e]) in {"u s", "usa", "beatles"}
    # Overlapping aliases are all marked; no alias gives no span.
    text = "West Sunset Boulevard, sunset blvd."
    assert _texts(text, find_answer_spans(text, ["west sunset boulevard", "sunset boulevard", "sunset blvd"])) == [
        "West Sunset Boulevard", "Sunset Boulevard", "sunset blvd"]
    assert find_answer_spans("nothing here", ["usa"]) == []
    assert find_answer_spans("the a an", ["the"]) == []  # an alias that normalises to nothing matches nothing


def test_truncate_whitespace_and_tokens(tiny_tokenizer):
    text = "one two  three\nfour five"
    assert truncate(text, 3) == ("one two  three", True)
    assert truncate(text, 5) == (text, False)
    long = " ".join(["river city music"] * 400)
    cut, was_cut = truncate(long, 100, tiny_tokenizer)
    assert was_cut and long.startswith(cut)
    assert len(tiny_tokenizer(cut, add_special_tokens=False)["input_ids"]) <= 100
    assert len(tiny_tokenizer(long[:len(cut) + 12], add_special_tokens=False)["input_ids"]) > 100
    assert truncate("short text", 100, tiny_tokenizer) == ("short text", False)


# --------------------------------------------------------------------------------- the reader

def test_read_wikipedia_fixture_for_evaluation():
    data = read_triviaqa(str(WIKI))
    assert [ex["id"] for ex in data.examples] == [
        "tqa_w1--United_States.txt", "tqa_w1--Flag_of_the_United_States.txt",
        "tqa_w2--Abbey_Road.txt", "tqa_w2--Abbey_Road_Studios.txt"]
    assert (data.n_questions, data.n_pairs, data.n_dropped, data.domains) == (2, 4, 0, ["Wikipedia"])
    assert data.budget == "4096 whitespace words"
    by_id = {ex["id"]: ex for ex in data.examples}
    us = by_id["tqa_w1--United_States.txt"]
    assert us["answers"]["text"] == ["United States", "United States", "U.S.A", "USA", "United States", "USA"]
    assert (us["question_id"], us["domain"], us["doc_source"], us["title"]) == (
        "tqa_w1", "Wikipedia", "wikipedia", "United States")
    assert us["aliases"] == ["u s a", "usa", "united states"]
    assert by_id["tqa_w2--Abbey_Road.txt"]["answers"]["text"] == ["BEATLES", "Beatles"]
    for ex in data.examples:
        assert ex["is_impossible"] is False and ex["question"]
        for text, start in zip(ex["answers"]["text"], ex["answers"]["answer_start"]):
            assert ex["context"][start:start + len(text)] == text
            assert normalize_answer(text) in {normalize_answer(a) for a in ex["aliases"]}


def test_answer_beyond_token_512(tiny_tokenizer):
    """Abbey_Road.txt names the band only after ~820 tokens (~660 words): found with 4096, not with 512."""
    for tokenizer in (tiny_tokenizer, None):
        long = read_triviaqa(str(WIKI), tokenizer=tokenizer, max_tokens=4096, train=True)
        ex = {e["id"]: e for e in long.examples}["tqa_w2--Abbey_Road.txt"]
        assert ex["answers"]["text"] == ["BEATLES", "Beatles"]
        assert (long.n_dropped, long.n_truncated) == (0, 0)

        short = read_triviaqa(str(WIKI), tokenizer=tokenizer, max_tokens=512, train=True)
        assert "tqa_w2--Abbey_Road.txt" not in {e["id"] for e in short.examples}
        assert (short.n_without_answer, short.n_dropped, short.n_truncated, len(short)) == (1, 1, 1, 3)
        # The other document of the question still trains it.
        assert "tqa_w2--Abbey_Road_Studios.txt" in {e["id"] for e in short.examples}

        kept = read_triviaqa(str(WIKI), tokenizer=tokenizer, max_tokens=512, train=False)
        ex = {e["id"]: e for e in kept.examples}["tqa_w2--Abbey_Road.txt"]
        assert ex["answers"] == {"text": [], "answer_start": []}
        assert (kept.n_without_answer, kept.n_dropped, len(kept)) == (1, 0, 4)
        if tokenizer is not None:
            assert len(tokenizer(ex["context"], add_special_tokens=False)["input_ids"]) <= 512
            assert kept.budget.startswith("512 tokens")
        else:
            assert len(ex["context"].split()) == 512


def test_read_web_fixture_uses_both_evidence_folders():
    data = read_triviaqa(str(WEB))
    by_id = {ex["id"]: ex for ex in data.examples}
    assert list(by_id) == ["tqa_b1--Paris.txt", "tqa_b1--12/12_345.txt", "tqa_b1--12/12_346.txt"]
    assert [by_id[k]["doc_source"] for k in by_id] == ["wikipedia", "web", "web"]
    assert by_id["tqa_b1--12/12_345.txt"]["answers"]["text"] == ["PARIS", "PARIS, France", "paris", "paris, France"]
    assert by_id["tqa_b1--Paris.txt"]["answers"]["text"] == ["Paris", "Paris", "City of Light"]
    assert by_id["tqa_b1--12/12_346.txt"]["answers"]["text"] == []  # kept for evaluation
    train = read_triviaqa(str(WEB), train=True)
    assert [ex["id"] for ex in train.examples] == ["tqa_b1--Paris.txt", "tqa_b1--12/12_345.txt"]
    assert train.n_dropped == 1 and train.domains == ["Web"]


def test_write_squad_json_loads_back(tmp_path):
    from longctx.data.squad import load_squad

    data = read_triviaqa(str(WEB), train=True)
    out = write_triviaqa_squad(data, tmp_path / "web-train.squad.json")
    back = load_squad(str(out))
    assert [ex["id"] for ex in back.examples] == [ex["id"] for ex in data.examples]
    assert [ex["answers"] for ex in back.examples] == [ex["answers"] for ex in data.examples]
    # evaluation pairs without an answer make no valid SQuAD 1.1 file: refused before anything is written
    with pytest.raises(LongctxError, match=r"record tqa_b1--12/12_346.txt: no answer in its document"):
        write_triviaqa_squad(read_triviaqa(str(WEB)), tmp_path / "web-dev.squad.json")
    assert not (tmp_path / "web-dev.squad.json").exists()


def test_hub_configs_become_official_layout(monkeypatch, tmp_path):
    """The hub's trivia_qa rows (features as on the hub) read like the official files; no network used."""
    import datasets

    rows = [{"question_id": "tqa_h1", "question": "Which band recorded Abbey Road?", "question_source": "",
             "answer": {"aliases": ["The Beatles", "Beatles"], "normalized_aliases": ["beatles"],
                        "value": "The Beatles", "normalized_value": "beatles", "type": "WikipediaEntity"},
             "entity_pages": {"doc_source": ["TagMe"], "filename": ["Abbey_Road.txt"], "title": ["Abbey Road"],
                              "wiki_context": ["Abbey Road is an album by the Beatles."]},
             "search_results": {"description": [], "filename": [], "rank": [], "title": [], "url": [],
                                "search_context": []}}]
    calls = []

    def fake_load(repo, config, split):
        calls.append((repo, config, split))
        return rows

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    data = read_triviaqa(name="trivia_qa/rc.wikipedia")
    assert calls[-1] == ("mandarjoshi/trivia_qa", "rc.wikipedia", "validation")
    (ex,) = data.examples
    assert (ex["id"], ex["domain"], ex["answers"]["text"]) == ("tqa_h1--Abbey_Road.txt", "Wikipedia", ["Beatles"])
    read_triviaqa("trivia_qa/rc.wikipedia:train", train=True)
    assert calls[-1] == ("mandarjoshi/trivia_qa", "rc.wikipedia", "train")
    preds = _write(tmp_path / "p.json", {"tqa_h1": "the beatles"})
    assert score(data="trivia_qa/rc.wikipedia", predictions=preds, format="triviaqa")["exact_match"] == 100.0
    assert calls[-1] == ("mandarjoshi/trivia_qa", "rc.wikipedia.nocontext", "validation")


def test_hub_unreachable_is_one_fast_error(monkeypatch):
    # Offline flags set (as in conftest) and nothing cached: datasets fails at once, we say what to do.
    with pytest.raises(LongctxError, match=r"trivia_qa/rc.wikipedia: cannot load .*qa/<file>.json"):
        read_triviaqa(name="trivia_qa/rc.wikipedia")
    # Online but no route to the hub: one TCP probe (refused here), no datasets retries.
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(LongctxError, match="cannot load mandarjoshi/trivia_qa"):
        read_triviaqa(name="trivia_qa/rc.web")


# --------------------------------------------------------------------------------- the metric

def test_metric_official_units_per_domain(tmp_path):
    wiki = json.loads(WIKI.read_text())
    web = json.loads(WEB.read_text())
    # Wikipedia: one answer per question (official keys). w2 "Beatles band" vs "beatles": F1 2/3.
    r = evaluate_triviaqa(wiki, {"tqa_w1": "the U.S.A", "tqa_w2": "Beatles band"})
    assert (r["exact_match"], r["f1"], r["common"], r["denominator"]) == (50.0, pytest.approx(100 * (1 + 2 / 3) / 2), 2, 2)
    assert (r["pred_len"], r["gold_len"]) == (2, 2)
    # Web: one answer per (question, document); "Lyon, France" vs "paris france": F1 1/2.
    r = evaluate_triviaqa(web, {"tqa_b1--Paris.txt": "Paris", "tqa_b1--12/12_345.txt": "Paris France",
                                "tqa_b1--12/12_346.txt": "Lyon, France"})
    assert (r["exact_match"], r["f1"], r["common"], r["denominator"]) == (
        100 * 2 / 3, 100 * 2.5 / 3, 3, 3)
    assert r["domains"]["Web"]["unit"] == "question-document pair"
    # The official script reads Web predictions by pair key only: a question-level key scores nothing ...
    r = evaluate_triviaqa(web, {"tqa_b1": "paris"})
    assert (r["exact_match"], r["common"], r["denominator"]) == (0.0, 0, 3)
    assert "fallback" not in r and "pairs_from_question_key" not in r["domains"]["Web"]
    # ... unless the fallback is asked for, which the result then says.
    r = evaluate_triviaqa(web, {"tqa_b1": "paris"}, fallback=True)
    assert (r["exact_match"], r["common"], r["domains"]["Web"]["pairs_from_question_key"]) == (100.0, 3, 3)
    assert r["fallback"] is True


def test_metric_default_is_official_on_both_keyings(shared_file, tmp_path, warnings):
    """Issue 14 #13: on the official sample (one Web question, two documents) with predictions keyed both ways,
    triviaqa_evaluation.py gives EM 50 / F1 50 / common 1: the pair without its own prediction scores 0."""
    data = shared_file("triviaqa/triviaqa_sample.json")
    preds = _write(tmp_path / "p.json", {"tc_33": "Sunset Boulevard", "tc_33--Andrew_Lloyd_Webber.txt": "Sunset Blvd"})
    r = score(data=str(data), predictions=preds, format="triviaqa")
    official = {"exact_match": 50.0, "f1": 50.0, "common": 1, "denominator": 2, "pred_len": 2, "gold_len": 2}
    assert {k: r[k] for k in official} == official and "fallback" not in r
    assert "1 (question, document) pair(s) have only a QuestionId prediction" in warnings.text
    r = score(data=str(data), predictions=preds, format="triviaqa", triviaqa_fallback=True)
    assert (r["exact_match"], r["common"], r["fallback"], r["domains"]["Web"]["pairs_from_question_key"]) == (
        100.0, 2, True, 1)


def test_metric_wikipedia_reads_question_keys_only(tmp_path):
    """A Wikipedia question is scored by its QuestionId prediction only (one document or several)."""
    wiki = json.loads(WIKI.read_text())
    r = evaluate_triviaqa(wiki, {"tqa_w1--United_States.txt": "USA", "tqa_w2": "Beatles"})
    assert (r["exact_match"], r["common"], r["denominator"]) == (50.0, 1, 2)
    r = evaluate_triviaqa(wiki, {"tqa_w1--United_States.txt": "USA", "tqa_w2": "Beatles"}, fallback=True)
    assert (r["exact_match"], r["common"], r["domains"]["Wikipedia"]["scored_by_best_document"]) == (100.0, 2, 1)
    # the flag reaches the CLI; it is refused for SQuAD data
    preds = _write(tmp_path / "p.json", {"tqa_w1--United_States.txt": "USA"})
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "longctx", "score", "--format", "triviaqa", "--data", str(WIKI),
                          "--predictions", preds, "--triviaqa-fallback"], capture_output=True, text=True)
    assert run.returncode == 0 and json.loads(run.stdout)["fallback"] is True, run.stderr
    with pytest.raises(LongctxError, match="--triviaqa-fallback applies to --format triviaqa only"):
        score(data=str(WIKI), predictions=preds, triviaqa_fallback=True)


def test_metric_best_document_rule_and_pooling():
    wiki = json.loads(WIKI.read_text())
    web = json.loads(WEB.read_text())
    doc_preds = {"tqa_w1--United_States.txt": "the U.S.A", "tqa_w1--Flag_of_the_United_States.txt": "Canada",
                 "tqa_w2--Abbey_Road.txt": "Beatles band", "tqa_w2--Abbey_Road_Studios.txt": "Pink Floyd"}
    assert evaluate_triviaqa(wiki, doc_preds)["common"] == 0  # official: no QuestionId keys, nothing scored
    r = evaluate_triviaqa(wiki, doc_preds, fallback=True)
    # w1 by its best document (EM 1), w2 by "Beatles band" (F1 2/3).
    assert (r["exact_match"], r["f1"], r["common"]) == (50.0, 100 * (1 + 2 / 3) / 2, 2)
    assert r["domains"]["Wikipedia"]["scored_by_best_document"] == 2
    # The official per-question key wins over document keys.
    r = evaluate_triviaqa(wiki, {**doc_preds, "tqa_w1": "Canada"}, fallback=True)
    assert r["exact_match"] == 0.0 and r["domains"]["Wikipedia"]["scored_by_best_document"] == 1
    # Both files: 2 Wikipedia questions + 3 Web pairs pooled; 12_346 has no prediction and scores 0.
    r = evaluate_triviaqa([wiki, web], {**doc_preds, "tqa_b1--Paris.txt": "Paris",
                                        "tqa_b1--12/12_345.txt": "Paris, France"}, fallback=True)
    assert (r["exact_match"], r["f1"], r["common"], r["denominator"]) == (
        60.0, 100 * (1 + 2 / 3 + 1 + 1 + 0) / 5, 4, 5)
    assert r["domains"]["Wikipedia"]["exact_match"] == 50.0
    assert r["domains"]["Web"]["exact_match"] == pytest.approx(100 * 2 / 3)


def test_metric_human_answers_and_verified_subset(tmp_path):
    web = json.loads(WEB.read_text())
    web["Data"][0]["Answer"]["HumanAnswers"] = ["The City of Lights"]
    assert evaluate_triviaqa(web, {"tqa_b1--Paris.txt": "city of lights"})["f1"] == pytest.approx(100 / 3)
    web["VerifiedEval"] = True
    web["Data"][0]["QuestionPartOfVerifiedEval"] = True
    for page in web["Data"][0]["EntityPages"] + web["Data"][0]["SearchResults"]:
        page["DocPartOfVerifiedEval"] = page["Filename"] == "12/12_345.txt"
    path = _write(tmp_path / "verified-web-dev.json", web)
    preds = _write(tmp_path / "p.json", {"tqa_b1--12/12_345.txt": "Paris"})
    r = score(data=path, predictions=preds, format="triviaqa")
    assert (r["exact_match"], r["denominator"]) == (100.0, 1)


def test_score_verb_prints_json_for_several_files(tmp_path, capsys):
    preds = _write(tmp_path / "p.json", {"tqa_w1": "USA", "tqa_b1--Paris.txt": "Paris", "tqa_b1--12/12_345.txt": "x"})
    r = score(data=f"{WIKI},{WEB}", predictions=preds, format="triviaqa")
    printed = json.loads(capsys.readouterr().out)
    assert printed == r
    assert (r["denominator"], r["common"], r["exact_match"]) == (5, 3, 40.0)
    assert set(r["domains"]) == {"Wikipedia", "Web"}


# --------------------------------------------------------------------------------- official sample

@pytest.mark.shared
def test_official_sample_scores_like_the_official_script(shared_file):
    data = shared_file("triviaqa/triviaqa_sample.json")
    preds = shared_file("triviaqa/sample_predictions.json")
    r = score(data=str(data), predictions=str(preds), format="triviaqa")
    # python -m evaluation.triviaqa_evaluation --dataset_file samples/triviaqa_sample.json
    #   --prediction_file samples/sample_predictions.json   (mandarjoshi/triviaqa):
    official = {"exact_match": 50.0, "f1": 50.0, "common": 1, "denominator": 2, "pred_len": 1, "gold_len": 2}
    assert {k: r[k] for k in official} == official
    assert r["domains"]["Web"]["denominator"] == 2


@pytest.mark.shared
def test_official_sample_without_evidence_names_file_and_question(shared_file, tmp_path):
    data = shared_file("triviaqa/triviaqa_sample.json")
    (tmp_path / "wikipedia").mkdir()
    with pytest.raises(LongctxError) as e:
        read_triviaqa(str(data), str(tmp_path))
    assert str(e.value).startswith(f"{data}: question tc_33: evidence file ")
    assert "Andrew_Lloyd_Webber.txt" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(LongctxError, match="evidence folder .* not found"):
        read_triviaqa(str(data))


# --------------------------------------------------------------------------------- malformed input

def _question(**over):
    q = {"QuestionId": "tqa_x1", "Question": "Q?", "Answer": {"Aliases": ["Paris"], "NormalizedAliases": ["paris"]},
         "EntityPages": [{"Filename": "Paris.txt", "Title": "Paris"}]}
    q.update(over)
    return {k: v for k, v in q.items() if v is not None}


@pytest.mark.parametrize("content, message", [
    ('{"Data": [', r"invalid JSON at line 1"),
    ({"Domain": "Wikipedia"}, r"not a TriviaQA qa file \(expected an object with a 'Data' list\)"),
    ({"Data": [_question()], "Domain": "Books"}, r"'Domain' must be one of Wikipedia, Web"),
    ({"Data": [_question(), _question(QuestionId=None)], "Domain": "Web"}, r"question #1: missing 'QuestionId'"),
    ({"Data": [_question(), _question(QuestionId="tqa_x2", Answer=None)], "Domain": "Web"},
     r"question tqa_x2: missing 'Answer'"),
    ({"Data": [_question(Answer={"Value": "Paris"})], "Domain": "Web"}, r"question tqa_x1: Answer needs 'Aliases'"),
    ({"Data": [_question(Question=None)], "Domain": "Web"}, r"question tqa_x1: missing 'Question'"),
    ({"Data": [_question(EntityPages=[{"Title": "Paris"}])], "Domain": "Web"},
     r"question tqa_x1: every EntityPages entry needs a 'Filename'"),
    ({"Data": [_question(EntityPages=[{"Filename": "Nowhere.txt"}])], "Domain": "Wikipedia"},
     r"question tqa_x1: evidence file .*Nowhere.txt not found"),
])
def test_malformed_files_give_one_line_errors(tmp_path, content, message):
    shutil.copytree(FIXTURE / "evidence", tmp_path / "evidence")
    (tmp_path / "qa").mkdir()
    path = _write(tmp_path / "qa" / "bad.json", content)
    with pytest.raises(LongctxError) as e:
        read_triviaqa(path)
    text = str(e.value)
    assert text.startswith(f"{path}: ") and "\n" not in text
    assert __import__("re").search(message, text), text


def test_test_files_without_answers_read_for_evaluation_only(tmp_path):
    shutil.copytree(FIXTURE / "evidence", tmp_path / "evidence")
    (tmp_path / "qa").mkdir()
    path = _write(tmp_path / "qa" / "wikipedia-test-without-answers.json",
                  {"Data": [_question(Answer=None)], "Domain": "Wikipedia"})
    (ex,) = read_triviaqa(path).examples
    assert ex["answers"]["text"] == [] and ex["aliases"] == []
    with pytest.raises(LongctxError, match="question tqa_x1: missing 'Answer'"):
        read_triviaqa(path, train=True)


def test_bad_predictions_file(tmp_path):
    preds = _write(tmp_path / "p.json", {"tqa_w1": ["USA"]})
    with pytest.raises(LongctxError, match=r"p.json: question tqa_w1: predictions value must be a string"):
        score(data=str(WIKI), predictions=preds, format="triviaqa")


# --------------------------------------------------------------------------------- recipes

@pytest.mark.parametrize("name, model, max_length, global_attention", [
    ("roberta-base", "roberta-base", 512, False),
    ("longformer-base", "allenai/longformer-base-4096", 4096, True),
    ("roberta-long", "runs/convert/roberta-base-4096", 4096, True),
])
def test_recipes(name, model, max_length, global_attention):
    recipe = load_recipe(RECIPES / f"{name}.yaml")
    assert (recipe["model"], recipe["max_length"], recipe["global_attention"]) == (model, max_length, global_attention)
    assert recipe["data_format"] == "triviaqa" and recipe["doc_stride"] == 128
    assert recipe["learning_rate"] == 3e-5
    assert recipe["per_device_train_batch_size"] * recipe["gradient_accumulation_steps"] == 32
    assert recipe["train_file"].endswith("qa/wikipedia-train.json")
    assert recipe["eval_file"].endswith("qa/wikipedia-dev.json")


def test_triviaqa_matrix_runs_through_sweep_and_report(tiny_encoder_dir, tmp_path):
    """Issue #8, item 3: TriviaQA cells in a `longctx sweep` matrix, scored by the official metric,
    and their numbers in `longctx report`'s table."""
    import yaml

    from longctx.report import report
    from longctx.sweep import sweep

    qa = Path(__file__).resolve().parent.parent / "fixtures" / "triviaqa" / "qa" / "wikipedia-dev.json"
    runs = tmp_path / "runs"
    matrix = tmp_path / "triviaqa.yaml"
    matrix.write_text(yaml.safe_dump({
        "runs_dir": str(runs), "seeds": [1, 2],
        "finetune": {"data_format": "triviaqa", "max_doc_tokens": 300, "max_length": 96, "doc_stride": 32,
                     "max_steps": 2, "per_device_train_batch_size": 4, "precision": "fp32", "save_model": False},
        "models": {"tiny-bert": {"model": str(tiny_encoder_dir("bert", max_positions=128))}},
        "datasets": {"triviaqa-wiki": {"train_file": str(qa), "eval_file": str(qa)}}}))
    result = sweep(str(matrix), isolate=False)
    assert [c["outcome"] for c in result["cells"]] == ["ran", "ran"]
    f1 = [json.loads((runs / f"tiny-bert/triviaqa-wiki/seed-{s}/metrics.json").read_text())["eval"]["f1"]
          for s in (1, 2)]
    import statistics

    (row,) = report(str(runs))["rows"]
    assert (row["model"], row["dataset"], row["n"]) == ("tiny-bert", "triviaqa-wiki", 2)
    assert row["f1"]["mean"] == pytest.approx(statistics.mean(f1), abs=1e-9)
    assert row["f1"]["std"] == pytest.approx(statistics.stdev(f1), abs=1e-9)
    assert "triviaqa-wiki" in (runs / "report" / "report.md").read_text()
