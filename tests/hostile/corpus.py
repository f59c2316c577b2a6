"""A generated corpus of malformed and hostile inputs, one `Case` per input the CLI must refuse.

Every case builds its files inside an empty folder and returns the command line (`longctx VERB ...`), the file
(or folder) the one-line error must name, the record it must name when there is one (a question id, or the
position of a record without a usable id) and the output folder that must not appear. The test
(tests/test_hostile_inputs.py) runs each case through the real CLI in a subprocess and checks: exit status 2,
exactly one line on stderr naming that file and record, no traceback, and no file or folder left behind.

Kinds covered, per input slot where they apply: empty, blank, truncated and invalid JSON, a byte-order mark,
non-UTF-8 bytes, 5,000 levels of nesting, an integer of 5,000 digits, NaN and infinities, a folder or a
missing path where a file belongs, the wrong top-level shape, every field missing or of the wrong type, and
the semantic mistakes (duplicate ids, answers outside the context, negative or misplaced answer_start,
answer lists that contradict the SQuAD version, unsupported or truncated models, impossible report figures).
"""
from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

CONTEXT = "Paris is the capital of France. The Eiffel Tower is in Paris."
SQUAD = {"version": "1.1", "data": [{"title": "Paris", "paragraphs": [{"context": CONTEXT, "qas": [
    {"id": "q1", "question": "What is the capital of France?", "answers": [{"answer_start": 0, "text": "Paris"}]},
    {"id": "q2", "question": "What is in Paris?", "answers": [{"answer_start": 32, "text": "The Eiffel Tower"}]},
]}]}]}
PREDICTIONS = {"q1": "Paris", "q2": "The Eiffel Tower"}
TRIVIAQA = {"Domain": "Web", "VerifiedEval": False, "Version": 1.0, "Data": [{
    "QuestionId": "tqa_1", "Question": "What is the capital of France?",
    "Answer": {"Aliases": ["Paris", "City of Light"], "NormalizedAliases": ["paris", "city of light"]},
    "EntityPages": [{"Filename": "Paris.txt", "Title": "Paris"}],
    "SearchResults": [{"Filename": "12/12_345.txt", "Title": "Visit Paris"}]}]}
TRIVIAQA_PREDICTIONS = {"tqa_1--Paris.txt": "Paris", "tqa_1--12/12_345.txt": "Paris"}
METRICS = {"model": "tiny", "eval_file": "dev.json", "seed": 1, "eval": {"exact_match": 50.0, "f1": 60.0}}
NAN = float("nan")

# File-level damage, applied to whichever JSON file a case breaks (`valid` is the intact file's bytes).
RAW: dict[str, Callable[[bytes], bytes]] = {
    "empty": lambda valid: b"",
    "blank": lambda valid: b" \n\t\n",
    "truncated": lambda valid: valid[:len(valid) // 2],
    "invalid": lambda valid: b'{"data": [1,, 2]}',
    "bom": lambda valid: b"\xef\xbb\xbf" + valid,
    "utf16": lambda valid: valid.decode().encode("utf-16"),
    "latin1": lambda valid: b'{"x": "caf\xe9"}',
    "nul": lambda valid: b"\x00" * 64,
    "nested": lambda valid: b"[" * 5000 + b"]" * 5000,
    "nested_objects": lambda valid: b'{"a":' * 5000 + b"1" + b"}" * 5000,
    "huge_int": lambda valid: b'{"x": ' + b"9" * 5000 + b"}",
}
# Where a file belongs: a folder, or nothing at all.
PLACE = ("folder", "missing")
# A few kinds for the verbs whose subprocess is costly (model libraries imported): one of each family.
RAW_FEW = ("truncated", "latin1", "nested", "huge_int")


@dataclass
class Run:
    argv: list[str]  # after `longctx`
    file: Path  # what the error must name
    record: str | None = None  # the record it must name too
    out: Path | None = None  # an output folder that must not be created


@dataclass
class Case:
    name: str
    verb: str
    build: Callable[..., Run]  # build(folder[, model=tiny model folder]) -> Run
    needs_model: bool = False
    xfail: str | None = None  # a known failure in code outside the data/scoring modules (strict xfail)
    marks: list = field(default_factory=list)


def dump(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")  # NaN/Infinity written as Python's JSON extension
    return path


def damage(path: Path, kind: str, valid: Any) -> Path:
    """Put the intact `valid` JSON, broken by `kind` (a RAW kind, 'folder' or 'missing'), at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "folder":
        path.mkdir()
        (path / "inside.json").write_text("{}")
    elif kind != "missing":
        path.write_bytes(RAW[kind](json.dumps(valid).encode()))
    return path


def squad(edit: Callable[[dict], Any] | None = None) -> dict:
    data = copy.deepcopy(SQUAD)
    if edit:
        edit(data)
    return data


def article(d):
    return d["data"][0]


def paragraph(d):
    return d["data"][0]["paragraphs"][0]


def question(d, i=0):
    return paragraph(d)["qas"][i]


def answer(d):
    return question(d)["answers"][0]


# ------------------------------------------------------------------------------------------- SQuAD gold data
# (where in the file, key, wrong values, the record the error names)
SQUAD_FIELDS = [
    (lambda d: d, "data", [{}, "data", None, 1], None),
    (article, "paragraphs", [{}, "p", None], "article 0"),
    (paragraph, "context", [1, None, ["Paris"], {}], "article 0 paragraph 0"),
    (paragraph, "qas", [{}, "q", None], "article 0 paragraph 0"),
    (question, "id", [1, None, ["q1"], True], "article 0 paragraph 0 question 0"),
    (question, "question", [1, None, []], "question q1"),
    (question, "answers", [{}, "Paris", None], "question q1"),
    (question, "is_impossible", ["false", "true", 0, 1, None, []], "question q1"),
    (answer, "text", [1, None, ["Paris"]], "question q1"),
    (answer, "answer_start", ["0", 0.0, 1.5, True, None, NAN, float("inf"), -1], "question q1"),
    (answer, "answer_start", [10 ** 6, 5], "q1"),  # misplaced: counted, then named as the first misaligned
]
SQUAD_MISSING = [(article, "paragraphs", "article 0"), (paragraph, "context", "article 0 paragraph 0"),
                 (paragraph, "qas", "article 0 paragraph 0"), (question, "id", "article 0 paragraph 0 question 0"),
                 (question, "question", "question q1"), (question, "answers", "question q1"),
                 (answer, "text", "question q1"), (answer, "answer_start", "question q1")]


def _set(where, key, value):
    return lambda d: where(d).__setitem__(key, value)


def _del(where, key):
    return lambda d: where(d).pop(key)


def _v2(edit):
    def apply(d):
        d["version"] = "v2.0"
        edit(d)
    return apply


SQUAD_SEMANTIC = {
    "duplicate_id": (lambda d: question(d, 1).update(id="q1"), "q1"),
    "answer_outside_context": (lambda d: answer(d).update(answer_start=len(CONTEXT) + 10), "q1"),
    "answer_text_not_in_context": (lambda d: answer(d).update(text="Lyon"), "q1"),
    "empty_context": (lambda d: paragraph(d).update(context=" \n "), "q1"),
    "v1_empty_answers": (lambda d: question(d, 1).update(answers=[]), "q2"),
    "v1_is_impossible_string": (lambda d: question(d).update(is_impossible="false"), "q1"),
    "v2_impossible_with_answers": (_v2(lambda d: question(d).update(is_impossible=True)), "q1"),
    "v2_answerable_without_answers": (_v2(lambda d: question(d, 1).update(answers=[], is_impossible=False)), "q2"),
    "article_not_object": (lambda d: d["data"].insert(0, "Paris"), "article 0"),
    "paragraph_not_object": (lambda d: article(d)["paragraphs"].insert(0, 7), "article 0 paragraph 0"),
    "question_not_object": (lambda d: paragraph(d)["qas"].insert(0, ["q0"]), "article 0 paragraph 0 question 0"),
    "answer_not_object": (lambda d: question(d)["answers"].insert(0, "Paris"), "q1"),
}
SQUAD_SHAPES = {"top_list": [SQUAD], "top_string": "data", "top_null": None, "top_number": 1.1}


def squad_gold_cases() -> list[Case]:
    cases = []

    def gold_case(name, make_gold, record=None):
        def build(folder: Path) -> Run:
            gold = make_gold(folder / "gold.json")
            preds = dump(folder / "predictions.json", PREDICTIONS)
            return Run(["score", "--data", str(gold), "--predictions", str(preds)], gold, record)
        return Case(f"score-squad-{name}", "score", build)

    for kind in (*RAW, *PLACE):
        cases.append(gold_case(kind, lambda p, kind=kind: damage(p, kind, SQUAD)))
    for name, shape in SQUAD_SHAPES.items():
        cases.append(gold_case(name, lambda p, shape=shape: dump(p, shape)))
    for where, key, values, record in SQUAD_FIELDS:
        for value in values:
            label = f"{key}={json.dumps(value)[:12]}"
            cases.append(gold_case(label, lambda p, e=_set(where, key, value): dump(p, squad(e)), record))
    for where, key, record in SQUAD_MISSING:
        cases.append(gold_case(f"no-{key}", lambda p, e=_del(where, key): dump(p, squad(e)), record))
    cases.append(gold_case("no-data", lambda p: dump(p, {"version": "1.1"})))
    for name, (edit, record) in SQUAD_SEMANTIC.items():
        cases.append(gold_case(name, lambda p, e=edit: dump(p, squad(e)), record))
    return cases


def predictions_cases() -> list[Case]:
    """The predictions and no-answer-probability files of `longctx score`."""
    cases = []

    def preds_case(name, make, record=None):
        def build(folder: Path) -> Run:
            gold = dump(folder / "gold.json", SQUAD)
            preds = make(folder / "predictions.json")
            return Run(["score", "--data", str(gold), "--predictions", str(preds)], preds, record)
        return Case(f"score-predictions-{name}", "score", build)

    for kind in (*RAW, *PLACE):
        cases.append(preds_case(kind, lambda p, kind=kind: damage(p, kind, PREDICTIONS)))
    for name, shape in {"list": ["Paris"], "string": "Paris", "null": None, "pairs": [["q1", "Paris"]]}.items():
        cases.append(preds_case(f"top_{name}", lambda p, shape=shape: dump(p, shape)))
    for value in (1, None, ["Paris"], {"text": "Paris"}, True, NAN):
        cases.append(preds_case(f"value={json.dumps(value)}", lambda p, v=value: dump(p, {**PREDICTIONS, "q1": v}),
                                "q1"))

    v2 = squad(lambda d: (d.update(version="v2.0"), question(d, 1).update(answers=[], is_impossible=True)))

    def na_case(name, make, record=None, gold=v2):
        def build(folder: Path) -> Run:
            gold_path = dump(folder / "gold.json", gold)
            preds = dump(folder / "predictions.json", PREDICTIONS)
            na = make(folder / "na_probs.json")
            return Run(["score", "--data", str(gold_path), "--predictions", str(preds), "--na-probs", str(na)],
                       na, record)
        return Case(f"score-na-probs-{name}", "score", build)

    for kind in ("invalid", "nested", "folder", "missing"):
        cases.append(na_case(kind, lambda p, kind=kind: damage(p, kind, {"q1": 0.1, "q2": 0.9})))
    cases.append(na_case("top_list", lambda p: dump(p, [0.1, 0.9])))
    for value in ("0.5", NAN, float("inf"), float("-inf"), None, True, [0.5]):
        cases.append(na_case(f"value={json.dumps(value)}", lambda p, v=value: dump(p, {"q1": v, "q2": 0.9}), "q1"))
    cases.append(na_case("missing_entry", lambda p: dump(p, {"q1": 0.1}), "q2"))
    cases.append(na_case("v1_gold", lambda p: dump(p, {"q1": 0.1, "q2": 0.9}), gold=SQUAD))
    return cases


# ------------------------------------------------------------------------------------------- TriviaQA
def triviaqa(edit: Callable[[dict], Any] | None = None) -> dict:
    data = copy.deepcopy(TRIVIAQA)
    if edit:
        edit(data)
    return data


def datum(d):
    return d["Data"][0]


def tqa_answer(d):
    return d["Data"][0]["Answer"]


TRIVIAQA_FIELDS = [
    (lambda d: d, "Data", [{}, "x", None], None),
    (lambda d: d, "Domain", ["Books", None, ["Web"], 1], None),
    (lambda d: d, "VerifiedEval", ["false", 0, None], None),
    (datum, "QuestionId", [1, None, "", ["tqa_1"]], "question #0"),
    (datum, "Answer", ["Paris", None, []], "tqa_1"),
    (tqa_answer, "Aliases", ["Paris", None, [1], [None]], "tqa_1"),
    (tqa_answer, "NormalizedAliases", ["paris", [1], None], "tqa_1"),
    (tqa_answer, "HumanAnswers", ["paris", [None]], "tqa_1"),
    (datum, "EntityPages", [{}, "Paris.txt", None], "tqa_1"),
    (datum, "SearchResults", [{}, 1], "tqa_1"),
    (datum, "QuestionPartOfVerifiedEval", ["yes", 1], "tqa_1"),
]
TRIVIAQA_SEMANTIC = {
    "question_not_object": (lambda d: d["Data"].insert(0, "tqa_0"), "question #0"),
    "duplicate_question_id": (lambda d: d["Data"].append(copy.deepcopy(d["Data"][0])), "tqa_1"),
    "no_answer": (lambda d: datum(d).pop("Answer"), "tqa_1"),
    "no_aliases_at_all": (lambda d: datum(d).update(Answer={"Aliases": [], "NormalizedAliases": []}), "tqa_1"),
    "page_without_filename": (lambda d: datum(d)["EntityPages"][0].pop("Filename"), "tqa_1"),
    "page_filename_number": (lambda d: datum(d)["SearchResults"][0].update(Filename=345), "tqa_1"),
    "page_not_object": (lambda d: datum(d)["EntityPages"].append("Lyon.txt"), "tqa_1"),
    "doc_verified_flag_number": (lambda d: datum(d)["SearchResults"][0].update(DocPartOfVerifiedEval=1), "tqa_1"),
    "answers_for_some_questions_only": (
        lambda d: d["Data"].append({"QuestionId": "tqa_2", "Question": "Q?", "EntityPages": []}), "tqa_2"),
}


def triviaqa_cases() -> list[Case]:
    cases = []

    def tqa_case(name, make, record=None):
        def build(folder: Path) -> Run:
            gold = make(folder / "qa" / "web-dev.json")
            preds = dump(folder / "predictions.json", TRIVIAQA_PREDICTIONS)
            return Run(["score", "--format", "triviaqa", "--data", str(gold), "--predictions", str(preds)],
                       gold, record)
        return Case(f"score-triviaqa-{name}", "score", build)

    for kind in (*RAW, *PLACE):
        cases.append(tqa_case(kind, lambda p, kind=kind: damage(p, kind, TRIVIAQA)))
    for name, shape in {"top_list": [TRIVIAQA], "top_string": "Data", "top_null": None}.items():
        cases.append(tqa_case(name, lambda p, shape=shape: dump(p, shape)))
    for where, key, values, record in TRIVIAQA_FIELDS:
        for value in values:
            cases.append(tqa_case(f"{key}={json.dumps(value)[:12]}",
                                  lambda p, e=_set(where, key, value): dump(p, triviaqa(e)), record))
    for name, (edit, record) in TRIVIAQA_SEMANTIC.items():
        cases.append(tqa_case(name, lambda p, e=edit: dump(p, triviaqa(e)), record))

    def second_file_bad(folder: Path) -> Run:  # several files pooled: the broken one is named
        good = dump(folder / "qa" / "wikipedia-dev.json", triviaqa(lambda d: d.update(Domain="Wikipedia")))
        bad = dump(folder / "qa" / "web-dev.json", triviaqa(lambda d: datum(d).pop("QuestionId")))
        preds = dump(folder / "predictions.json", TRIVIAQA_PREDICTIONS)
        return Run(["score", "--format", "triviaqa", "--data", f"{good},{bad}", "--predictions", str(preds)],
                   bad, "question #0")
    cases.append(Case("score-triviaqa-second-of-two-files", "score", second_file_bad))

    def tqa_preds_case(name, value, record=None):
        def build(folder: Path) -> Run:
            gold = dump(folder / "qa" / "web-dev.json", TRIVIAQA)
            preds = dump(folder / "predictions.json", value) if not callable(value) else value(folder)
            return Run(["score", "--format", "triviaqa", "--data", str(gold), "--predictions", str(preds)],
                       preds, record)
        return Case(f"score-triviaqa-predictions-{name}", "score", build)

    cases.append(tqa_preds_case("value_number", {"tqa_1--Paris.txt": 1}, "tqa_1--Paris.txt"))
    cases.append(tqa_preds_case("top_list", ["Paris"]))
    cases.append(tqa_preds_case("folder", lambda f: damage(f / "predictions.json", "folder", {})))
    return cases


# ------------------------------------------------------------------------------------------- finetune / evaluate
def finetune_cases() -> list[Case]:
    """Data-file mistakes must stop finetune/evaluate before any model is loaded (the model path does not exist,
    so an error about the model means the data was checked too late) and before --out is created."""
    cases = []

    def ft_case(name, slot, make, record=None, data_format="squad", xfail=None, pipeline=None):
        def build(folder: Path) -> Run:
            bad = make(folder / "data" / "bad.json")
            good = dump(folder / "data" / "good.json", SQUAD)
            train, evalf = (bad, good) if slot == "train" else (good, bad)
            out = folder / "run"
            argv = ["finetune", "--model", str(folder / "no-such-model"), "--out", str(out),
                    "--train-file", str(train), "--eval-file", str(evalf), "--max-steps", "1"]
            if data_format != "squad":
                argv += ["--data-format", data_format]
            if pipeline:
                argv += ["--pipeline", pipeline]
            return Run(argv, bad, record, out)
        return Case(f"finetune-{pipeline + '-' if pipeline else ''}{slot}-{name}", "finetune", build, xfail=xfail)

    for kind in (*RAW_FEW, *PLACE):
        cases.append(ft_case(kind, "train", lambda p, kind=kind: damage(p, kind, SQUAD)))
    cases.append(ft_case("is_impossible_string", "eval",
                         lambda p: dump(p, squad(lambda d: question(d).update(is_impossible="false"))), "q1"))
    cases.append(ft_case("v1_empty_answers", "eval", lambda p: dump(p, squad(lambda d: question(d, 1).update(
        answers=[]))), "q2"))
    cases.append(ft_case("answer_start_string", "train", lambda p: dump(p, squad(lambda d: answer(d).update(
        answer_start="0"))), "q1"))
    cases.append(ft_case("triviaqa_invalid", "train", lambda p: damage(p, "invalid", TRIVIAQA),
                         data_format="triviaqa"))
    # the peer-check pipeline reads the same files with the same checks, before its model and folder
    for slot, kind in (("train", "truncated"), ("eval", "missing"), ("eval", "nested")):
        cases.append(ft_case(kind, slot, lambda p, kind=kind: damage(p, kind, SQUAD), pipeline="hf-reference"))
    cases.append(ft_case("answer_start_string", "train", lambda p: dump(p, squad(lambda d: answer(d).update(
        answer_start="0"))), "q1", pipeline="hf-reference"))

    def reference_model_case() -> Case:
        def build(folder: Path) -> Run:
            good = dump(folder / "data" / "good.json", SQUAD)
            model, out = folder / "no-such-model", folder / "run"
            return Run(["finetune", "--pipeline", "hf-reference", "--model", str(model), "--out", str(out),
                        "--train-file", str(good)], model, None, out)
        return Case("finetune-hf-reference-missing-model", "finetune", build)

    cases.append(reference_model_case())

    def ev_case(name, make, record=None, with_out=True):
        def build(folder: Path) -> Run:
            bad = make(folder / "data" / "bad.json")
            out = folder / "eval-out"
            argv = ["evaluate", "--model", str(folder / "no-such-model"), "--data", str(bad)]
            if with_out:
                argv += ["--out", str(out)]
            return Run(argv, bad, record, out)
        return Case(f"evaluate-{name}", "evaluate", build)

    cases.append(ev_case("invalid", lambda p: damage(p, "invalid", SQUAD)))
    cases.append(ev_case("folder", lambda p: damage(p, "folder", SQUAD), with_out=False))
    cases.append(ev_case("is_impossible_string",
                         lambda p: dump(p, squad(lambda d: question(d).update(is_impossible="false"))), "q1"))
    return cases


# ------------------------------------------------------------------------------------------- convert
def convert_cases() -> list[Case]:
    """Bad source model folders: the error names the folder (or its file), and --out is not created."""
    cases = []

    def conv_case(name, make, needs_model=False, xfail=None):
        def build(folder: Path, model: Path | None = None) -> Run:
            source, named = make(folder / "source", model)
            out = folder / "long"
            return Run(["convert", "--model", str(source), "--out", str(out), "--max-pos", "256",
                        "--attention-window", "32"], named, None, out)
        return Case(f"convert-{name}", "convert", build, needs_model=needs_model, xfail=xfail)

    def folder_with(config: Any):
        def make(src: Path, model):
            src.mkdir(parents=True)
            if isinstance(config, bytes):
                (src / "config.json").write_bytes(config)
            elif config is not None:
                dump(src / "config.json", config)
            return src, src
        return make

    cases.append(conv_case("no_config", folder_with(None)))
    cases.append(conv_case("config_gpt2", folder_with({"model_type": "gpt2", "n_layer": 1, "n_embd": 8,
                                                       "n_head": 2, "vocab_size": 10})))
    cases.append(conv_case("config_unknown_type", folder_with({"model_type": "no-such-architecture"})))
    cases.append(conv_case("config_invalid_json", folder_with(b'{"model_type": "roberta",')))
    cases.append(conv_case("config_list", folder_with([{"model_type": "roberta"}])))
    cases.append(conv_case("config_nested", folder_with(b"[" * 5000 + b"]" * 5000)))
    cases.append(conv_case("config_wrong_types", folder_with({"model_type": "roberta", "hidden_size": "big",
                                                              "num_hidden_layers": [2]})))

    def a_file(src: Path, model):
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_text("{}")
        return src, src
    cases.append(conv_case("model_is_a_file", a_file))

    def truncated_weights(src: Path, model: Path):
        shutil.copytree(model, src)
        weights = src / "model.safetensors"
        data = weights.read_bytes()
        weights.write_bytes(data[:len(data) // 2])
        return src, src

    def garbage_weights(src: Path, model: Path):
        shutil.copytree(model, src)
        (src / "model.safetensors").write_bytes(b"\x00" * 100)
        return src, src

    cases.append(conv_case("truncated_safetensors", truncated_weights, needs_model=True))
    cases.append(conv_case("garbage_safetensors", garbage_weights, needs_model=True))
    return cases


# ------------------------------------------------------------------------------------------- report
def report_cases() -> list[Case]:
    """Garbage metrics.json (and its neighbours) in a runs folder: named, and no report folder appears."""
    cases = []

    def rep_case(name, write_bad, record=None):
        def build(folder: Path) -> Run:
            runs = folder / "runs"
            dump(runs / "good" / "metrics.json", METRICS)
            bad = write_bad(runs / "bad")
            return Run(["report", str(runs)], bad, record, runs / "report")
        return Case(f"report-{name}", "report", build)

    def metrics_with(edit):
        def write(run: Path) -> Path:
            m = copy.deepcopy(METRICS)
            edit(m)
            return dump(run / "metrics.json", m)
        return write

    for kind in ("empty", "truncated", "latin1", "nested", "huge_int", "folder"):
        cases.append(rep_case(kind, lambda run, kind=kind: damage(run / "metrics.json", kind, METRICS)))
    cases.append(rep_case("top_list", lambda run: dump(run / "metrics.json", [METRICS])))
    for key, value in (("f1", "high"), ("f1", NAN), ("f1", float("inf")), ("f1", 250), ("f1", None),
                       ("exact_match", [50]), ("f1", True)):
        cases.append(rep_case(f"eval.{key}={json.dumps(value)}", metrics_with(
            lambda m, k=key, v=value: m["eval"].__setitem__(k, v)), f"eval.{key}"))
    cases.append(rep_case("eval_list", metrics_with(lambda m: m.update(eval=[50, 60])), "eval"))
    cases.append(rep_case("model_number", metrics_with(lambda m: m.update(model=5)), "model"))

    def cell_with(seed):
        def write(run: Path) -> Path:
            dump(run / "metrics.json", METRICS)
            return dump(run / "cell.json", {"status": "done", "model": "tiny", "dataset": "dev", "seed": seed})
        return write
    cases.append(rep_case("cell_seed_list", cell_with([1]), "seed"))
    cases.append(rep_case("cell_seed_string", cell_with("one"), "seed"))

    def run_json_garbage(run: Path) -> Path:
        dump(run / "metrics.json", METRICS)
        return damage(run / "run.json", "truncated", {"config": {"model": "tiny"}})
    cases.append(rep_case("run_json_truncated", run_json_garbage))
    return cases


def all_cases() -> list[Case]:
    return squad_gold_cases() + predictions_cases() + triviaqa_cases() + finetune_cases() + convert_cases() + \
        report_cases()
