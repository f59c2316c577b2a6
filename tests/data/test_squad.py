"""SQuAD-format loading: validation errors name the file and the question, v2, round trips, real files."""
from __future__ import annotations

import copy
import json

import pytest

from longctx.common import LongctxError
from longctx.data import squad
from longctx.data.squad import SquadData, load_squad, to_squad_json, write_squad

CONTEXT = "Paris is the capital of France. The Eiffel Tower is in Paris."
TINY = {"version": "1.1", "data": [{"title": "Paris", "paragraphs": [{"context": CONTEXT, "qas": [
    {"id": "q1", "question": "What is the capital of France?", "answers": [{"answer_start": 0, "text": "Paris"}]},
    {"id": "q2", "question": "What is in Paris?",
     "answers": [{"answer_start": 32, "text": "The Eiffel Tower"}, {"answer_start": 36, "text": "Eiffel Tower"}]},
]}]}]}


def write(tmp_path, obj, name="squad_tiny.json"):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")
    return path


def tiny(edit=None):
    """A deep copy of TINY, edited in place by `edit(data)`."""
    data = copy.deepcopy(TINY)
    if edit:
        edit(data)
    return data


def qa(data, i):
    return data["data"][0]["paragraphs"][0]["qas"][i]


def test_loads_flat_records(tmp_path):
    data = load_squad(str(write(tmp_path, TINY)))
    assert isinstance(data, SquadData) and data.version == "1.1" and len(data) == 2
    assert data.examples[1] == {"id": "q2", "title": "Paris", "context": CONTEXT, "question": "What is in Paris?",
                                "answers": {"text": ["The Eiffel Tower", "Eiffel Tower"], "answer_start": [32, 36]},
                                "is_impossible": False}


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("data"), "missing field 'data'"),
    (lambda d: d["data"][0].pop("paragraphs"), "article 0: missing field 'paragraphs'"),
    (lambda d: d["data"][0]["paragraphs"][0].pop("context"), "article 0 paragraph 0: missing field 'context'"),
    (lambda d: d["data"][0]["paragraphs"][0].pop("qas"), "article 0 paragraph 0: missing field 'qas'"),
    (lambda d: qa(d, 1).pop("id"), "article 0 paragraph 0 question 1: missing field 'id'"),
    (lambda d: qa(d, 1).pop("question"), "question q2: missing field 'question'"),
    (lambda d: qa(d, 1).pop("answers"), "question q2: missing field 'answers'"),
    (lambda d: qa(d, 1)["answers"][1].pop("answer_start"), "question q2: missing field 'answer_start'"),
    (lambda d: qa(d, 1)["answers"][0].update(answer_start="32"), "question q2: field 'answer_start' must be a int"),
    (lambda d: qa(d, 1)["answers"][0].update(answer_start=-1), "question q2: field 'answer_start' must be 0 or more"),
    (lambda d: qa(d, 1).update(id="q1"), "question q1: duplicate question id"),
    (lambda d: d["data"][0]["paragraphs"][0].update(context="  "), "question q1: empty context"),
    # bool("false") is True: a string flag would have made this v1.1 file SQuAD 2.0
    (lambda d: qa(d, 0).update(is_impossible="false"), "question q1: field 'is_impossible' must be true or false, "
                                                        "got str 'false'"),
    (lambda d: qa(d, 1).update(is_impossible=0), "question q2: field 'is_impossible' must be true or false, got int"),
    (lambda d: qa(d, 1).update(is_impossible=None), "question q2: field 'is_impossible' must be true or false"),
    # answers per version: 1.1 needs one; 2.0 needs none when unanswerable and one when answerable
    (lambda d: qa(d, 1).update(answers=[]), "question q2: no answers (SQuAD 1.1 needs at least one"),
    (lambda d: (d.update(version="v2.0"), qa(d, 1).update(answers=[], is_impossible=False)),
     "question q2: no answers but is_impossible is false"),
    (lambda d: qa(d, 0).update(is_impossible=True), "question q1: is_impossible is true but it has 1 answer(s)"),
])
def test_errors_name_the_file_and_the_record(tmp_path, edit, message):
    path = write(tmp_path, tiny(edit))
    with pytest.raises(LongctxError) as err:
        load_squad(str(path))
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)
    assert "\n" not in str(err.value)


def test_v2_without_is_impossible_follows_the_answers_list(tmp_path):
    """evaluate-v2.0.py decides "answerable" by the answers list; a v2 file without the flag loads the same way."""
    data = tiny(lambda d: (d.update(version="v2.0"), qa(d, 1).update(answers=[])))
    loaded = load_squad(str(write(tmp_path, data)))
    assert [e["is_impossible"] for e in loaded.examples] == [False, True] and loaded.version == "2.0"


def test_v1_empty_answers_no_longer_score_silently(tmp_path):
    """Issue 14 #3: a v1.1 question with an empty answers list scored 0 unannounced (perfect predictions: EM 66.7)."""
    from longctx.qa.metrics import score

    data = tiny(lambda d: d["data"][0]["paragraphs"][0]["qas"].append(
        {"id": "q3", "question": "Where?", "answers": []}))
    path = write(tmp_path, data)
    preds = write(tmp_path, {"q1": "Paris", "q2": "Eiffel Tower", "q3": "Paris"}, "preds.json")
    with pytest.raises(LongctxError, match=rf"^{path}: question q3: no answers \(SQuAD 1.1"):
        score(data=str(path), predictions=str(preds))


def test_invalid_json_names_line_and_column(tmp_path):
    path = write(tmp_path, '{"data": [\n  {"title": "x",]\n}')
    with pytest.raises(LongctxError, match=r"squad_tiny\.json: invalid JSON at line 2 column"):
        load_squad(str(path))


def test_missing_json_file_is_not_sent_to_the_hub(tmp_path):
    with pytest.raises(LongctxError, match="nowhere.json: SQuAD file not found"):
        load_squad(str(tmp_path / "nowhere.json"))


def test_misaligned_answers_fail_above_the_limit(tmp_path):
    data = tiny(lambda d: qa(d, 1)["answers"][0].update(answer_start=5))
    path = write(tmp_path, data)
    with pytest.raises(LongctxError, match=r"1 of 3 answers \(33\.33%\) are not found at their answer_start.*first: q2"):
        load_squad(str(path))


def test_misaligned_answers_below_the_limit_warn(tmp_path, warnings):
    data = tiny(lambda d: qa(d, 1)["answers"][0].update(answer_start=5))
    loaded = load_squad(str(write(tmp_path, data)), max_misaligned=0.5)
    assert len(loaded) == 2
    assert "1 of 3 answers (33.33%) are not found" in warnings.text


def test_v2_impossible_questions(tmp_path):
    data = tiny(lambda d: d["data"][0]["paragraphs"][0]["qas"].append(
        {"id": "q3", "question": "What is the capital of Mars?", "answers": [], "is_impossible": True}))
    loaded = load_squad(str(write(tmp_path, data)))
    assert loaded.version == "2.0"  # an impossible question makes it 2.0 whatever "version" says
    assert [e["is_impossible"] for e in loaded.examples] == [False, False, True]
    assert loaded.examples[2]["answers"] == {"text": [], "answer_start": []}
    data["version"] = "v2.0"
    data["data"][0]["paragraphs"][0]["qas"].pop()
    assert load_squad(str(write(tmp_path, data))).version == "2.0"


@pytest.mark.parametrize("version", ["1.1", "2.0"])
def test_round_trip(tmp_path, version):
    data = tiny(lambda d: d["data"].append({"title": "Mars", "paragraphs": [
        {"context": "Mars is red.", "qas": [{"id": "m1", "question": "What colour is Mars?",
                                             "answers": [{"answer_start": 8, "text": "red"}]}]},
        {"context": "Mars has two moons.", "qas": [
            {"id": "m2", "question": "Who lives on Mars?", "answers": [], "is_impossible": True} if version == "2.0"
            else {"id": "m2", "question": "How many moons?", "answers": [{"answer_start": 9, "text": "two"}]}]}]}))
    first = load_squad(str(write(tmp_path, data)))
    assert first.version == version
    out = write_squad(first.examples, tmp_path / "out" / "squad_round_trip.json", version)
    again = load_squad(str(out))
    assert again.examples == first.examples and again.version == version
    nested = json.loads(out.read_text(encoding="utf-8"))
    assert nested["version"] == ("v2.0" if version == "2.0" else "1.1")
    assert [len(a["paragraphs"]) for a in nested["data"]] == [1, 2]
    assert nested == to_squad_json(first.examples, version)


def test_hub_name_offline_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no cached copy to fall back on
    with pytest.raises(LongctxError, match=r"^squad: cannot load rajpurkar/squad validation split: offline mode .*"
                                           r"; download the JSON and pass its path$"):
        load_squad("squad")


def test_hub_unreachable_fails_before_datasets_retries(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)

    def no_network(*args, **kwargs):
        raise OSError("Name or service not known")

    import socket

    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(LongctxError, match=r"^xquad.de: cannot load google/xquad \(xquad.de\) validation split: "
                                           r"the Hugging Face hub is not reachable"):
        load_squad("xquad.de")


def test_hub_names():
    assert squad.hub_target("squad_v2") == ("rajpurkar/squad_v2", None, "2.0")
    assert squad.hub_target("xquad.de") == ("google/xquad", "xquad.de", "1.1")
    assert squad.hub_target("mlqa.de.en") == ("facebook/mlqa", "mlqa.de.en", "1.1")
    assert squad.hub_target("tydiqa") == ("google-research-datasets/tydiqa", "secondary_task", "1.1")


@pytest.mark.parametrize("relative, count, impossible, version", [
    ("squad-v1.1/dev-v1.1.json", 10570, 0, "1.1"),
    ("squad-v2.0-explorer-derived/dev-v2.0.explorer-derived.json", 11873, 5945, "2.0"),
    ("xquad/xquad.de.json", 1190, 0, "1.1"),
])
def test_shared_files(shared_file, relative, count, impossible, version):
    data = load_squad(str(shared_file(relative)))
    assert (len(data), sum(e["is_impossible"] for e in data.examples), data.version) == (count, impossible, version)


@pytest.mark.parametrize("version, impossible, expected", [
    ("1.1", False, False), (None, False, False), ("", False, False), ("v1.1", False, False),
    ("2.0", False, True), ("v2.0", False, True), (2.0, False, True),
    ("1.1", True, True), (None, True, True),  # an unanswerable question makes it SQuAD 2.0 whatever the version
])
def test_is_squad_v2(version, impossible, expected):
    examples = [{"id": "q1", "is_impossible": False}, {"id": "q2", "is_impossible": impossible}]
    assert squad.is_squad_v2(version, examples) is expected


def test_version_follows_is_squad_v2_on_load_and_write(tmp_path):
    def impossible(data):
        data["data"][0]["paragraphs"][0]["qas"].append(
            {"id": "q3", "question": "What is in Lyon?", "answers": [], "is_impossible": True})

    # A "1.1" file holding an unanswerable question loads as 2.0 and is written back in the v2 layout.
    loaded = load_squad(str(write(tmp_path, tiny(impossible))))
    assert loaded.version == "2.0"
    assert to_squad_json(loaded.examples, loaded.version)["version"] == "v2.0"
    assert load_squad(str(write(tmp_path, tiny(), "v1.json"))).version == "1.1"
