"""Shipped recipes and the verb table: every recipe under experiments/ binds strictly against its verb, every
sweep matrix plans strictly, the scripts' documented examples bind, and one verb table serves every route."""
from __future__ import annotations

import functools
import importlib.util
import inspect
import re
import shlex
from pathlib import Path

import pytest

from longctx.common import LongctxError
from longctx.config import VERBS, bind, inherit, load_recipe, parameters, read_yaml, resolve, select

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = ROOT / "experiments"
RECIPES = sorted(EXPERIMENTS.rglob("*.yaml"))
# The verb a folder's recipes are for. A new folder must be added here, so no recipe goes unchecked.
FOLDER_VERB = {"finetune": "finetune", "pretrain": "pretrain", "t5": "finetune", "triviaqa": "finetune"}


def is_matrix(path: Path) -> bool:
    data = read_yaml(path, "recipe")
    return isinstance(data, dict) and "models" in data and "datasets" in data


MATRICES = [p for p in RECIPES if is_matrix(p)]
SINGLE = [p for p in RECIPES if not is_matrix(p)]


def test_every_recipe_is_checked():
    assert MATRICES and SINGLE
    assert {p.relative_to(EXPERIMENTS).parts[0] for p in SINGLE} <= set(FOLDER_VERB), \
        "a recipe folder without a verb in FOLDER_VERB"


@pytest.mark.parametrize("recipe", SINGLE, ids=[str(p.relative_to(EXPERIMENTS)) for p in SINGLE])
def test_recipe_binds_strictly_against_its_verb(recipe):
    values = load_recipe(recipe)
    fn = select(resolve(FOLDER_VERB[recipe.relative_to(EXPERIMENTS).parts[0]]), values)
    # Required fields a recipe leaves to the command line (model, out) get a placeholder; every field it
    # does set must be a field of the verb with a value of the field's type.
    missing = {name: "-" for name, p in parameters(fn).items()
               if p.default is inspect.Parameter.empty and name not in values}
    bound = bind(fn, {**values, **missing}, source=str(recipe))
    assert set(values) <= set(bound)


@pytest.mark.parametrize("matrix", MATRICES, ids=[p.name for p in MATRICES])
def test_matrix_plans_strictly(matrix, tmp_path, monkeypatch):
    from longctx.sweep.plan import plan

    for name in set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", matrix.read_text())):
        monkeypatch.setenv(name, f"/{name.lower()}")  # variables without a default must be set: strict
    p = plan(matrix, runs_dir=tmp_path / "runs", strict=True)
    assert p.cells and not list(tmp_path.iterdir())  # planned, nothing run or written
    for cell in p.cells:  # each cell's call binds as the runner will bind it
        bind(select(resolve(cell.function), cell.kwargs), {**cell.kwargs, "out": "-"}, source=cell.name)


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _examples(script: str) -> list[list[str]]:
    """The argument lists of `make repl run="scripts/<script>.py ..."` in the script's docstring."""
    doc = (ROOT / "scripts" / f"{script}.py").read_text()
    return [shlex.split(args) for args in re.findall(rf'make repl run="scripts/{script}\.py ([^"]*)"', doc)]


def test_readme_make_repl_example_binds_without_extra_flags(minilm_dir, monkeypatch):
    """README: `make repl run="scripts/finetune_qa_models.py --config experiments/finetune/base.yaml"` runs as
    written: the script gives the fields the recipe leaves open a default (the binding, not the training)."""
    from longctx.cli import parse_command

    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("DATA_DIR", "/data")
    monkeypatch.delenv("LOG_DIR", raising=False)
    readme = (ROOT / "README.org").read_text()
    (argv,) = _examples("finetune_qa_models")
    assert argv == ["--config", "experiments/finetune/base.yaml"] and " ".join(argv) in readme
    script = _script("finetune_qa_models")
    fn, values, source = parse_command("finetune", argv + script.default_flags(argv))
    bound = bind(fn, values, source=source)
    assert Path(bound["model"]) == Path(minilm_dir)
    assert bound["train_file"] == "/data/squad/train-v1.1.json" and bound["eval_file"] == "/data/squad/dev-v1.1.json"
    assert bound["out"].startswith("runs/finetune_qa_models-") and bound["max_length"] == 512  # the recipe's
    # what the flags give is kept, not replaced by a default
    given = argv + ["--model", "my-model", "--eval-file", "dev.json", "-o", "runs/x"]
    assert script.default_flags(given) == []


def test_run_long_lm_example_binds():
    from longctx.cli import parse_command

    (argv,) = _examples("run_long_lm")
    fn, values, source = parse_command("pretrain", [a.replace("experiments/", f"{EXPERIMENTS}/") for a in argv])
    assert bind(fn, values, source=source)["block_size"] == 4096


# ------------------------------------------------------------------------------------------ verb table


def test_every_verb_resolves_and_builds_its_command_line():
    from longctx.cli import command_parser

    names = [f"{name} {sub}" if isinstance(entry, dict) else name
             for name, entry in VERBS.items() for sub in (entry if isinstance(entry, dict) else [None])]
    for name in names:
        fn = resolve(name)
        assert inspect.getdoc(fn), name
        command_parser(name, fn)  # a signature the CLI cannot express fails here
    with pytest.raises(LongctxError, match="unknown verb"):
        resolve("kfp render")


def test_python_api_seq2seq_refuses_fields_the_t5_verb_lacks():
    """Issue 13: these fields used to vanish silently; now the call names every one it cannot forward."""
    from longctx.finetune import finetune

    with pytest.raises(LongctxError) as e:
        finetune(task="seq2seq", data_format="triviaqa", lang="de", max_length=4096, learning_rate=1e-4)
    message = str(e.value)
    assert "\n" not in message and "finetune_seq2seq" in message
    assert re.search(r"unknown field\(s\) data_format, lang, max_length for", message), message


def test_python_api_seq2seq_forwards_every_given_field(monkeypatch):
    """A field given with the extractive default's value (learning_rate 3e-5) still reaches the T5 verb,
    whose own default (1e-3) it overrides; fields not given keep the T5 verb's defaults."""
    import longctx.seq2seq
    from longctx.finetune import finetune

    calls = []
    real = longctx.seq2seq.finetune_seq2seq

    @functools.wraps(real)
    def record(**kwargs):
        calls.append(kwargs)
        return {"recorded": True}

    monkeypatch.setattr(longctx.seq2seq, "finetune_seq2seq", record)
    assert finetune(task="seq2seq", model="t5", out="runs/x", eval_file="dev.json", learning_rate=3e-5,
                    warmup_steps=0.1) == {"recorded": True}
    assert calls == [{"task": "seq2seq", "model": "t5", "out": "runs/x", "eval_file": "dev.json",
                      "learning_rate": 3e-5, "warmup_steps": 0.1}]


def test_inherit_has_one_merge_rule_for_recipe_files_and_matrices(tmp_path):
    """`inherit:` merges nested mappings key by key, whether a recipe file or a matrix's inline recipe
    inherits (the sweep used to replace them whole)."""
    from longctx.sweep.plan import plan

    (tmp_path / "base.yaml").write_text("max_steps: 5\nlearning_rate: 1.0e-4\nx-extra: {a: 1, b: 2}\n")
    (tmp_path / "child.yaml").write_text("inherit: base.yaml\nmax_steps: 7\nx-extra: {b: 3}\n")
    expected = {"max_steps": 7, "learning_rate": 1e-4, "x-extra": {"a": 1, "b": 3}}
    assert load_recipe(tmp_path / "child.yaml") == expected
    assert inherit({"inherit": "base.yaml", "max_steps": 7, "x-extra": {"b": 3}}, tmp_path) == expected
    (tmp_path / "pre.yaml").write_text("max_steps: 5\nlearning_rate: 1.0e-4\n")
    (tmp_path / "m.yaml").write_text(
        "models: {long: {model: hub/enc, pretrain: {inherit: pre.yaml, max_steps: 9}}}\n"
        "datasets: {squad: {train_file: t.json, eval_file: d.json}}\n")
    (cell,) = [c for c in plan(tmp_path / "m.yaml", runs_dir=tmp_path / "runs").cells if c.kind == "pretrain"]
    assert cell.kwargs == {"max_steps": 9, "learning_rate": 1e-4, "model": "hub/enc"}
