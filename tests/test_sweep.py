"""`longctx sweep`: matrix expansion, crash safety (a real kill -9 mid-sweep), resume, adoption, report."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from longctx.common import LongctxError
from longctx.sweep import sweep
from longctx.sweep.plan import plan
from longctx.sweep.registry import Registry
from longctx.sweep.state import folder_state

# Tiny but real fine-tuning: 2 optimizer steps on a handful of windows.
TINY = {"max_length": 64, "doc_stride": 16, "max_steps": 2, "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 16, "logging_steps": 1, "save_model": False, "precision": "fp32",
        "group_by_length": False, "n_best": 5}


@pytest.fixture(scope="module")
def qa_files(tmp_path_factory):
    from longctx.data.squad import write_squad
    from longctx.data.synthetic import long_qa_examples

    folder = tmp_path_factory.mktemp("qa")
    # Two "articles" of generated paragraphs, so SQ3-style concatenation has neighbours to draw from.
    train = long_qa_examples(8, min_words=30, max_words=50, seed=1)
    dev = long_qa_examples(4, min_words=30, max_words=50, seed=2)
    for i, e in enumerate(train + dev):
        e["title"] = f"article-{i % 2}"
    write_squad(train, folder / "train.json")
    write_squad(dev, folder / "dev.json")
    return folder


def _matrix(path: Path, models: dict, datasets: dict, seeds: list[int], runs: Path, **base) -> Path:
    path.write_text(yaml.safe_dump({"description": "test matrix", "runs_dir": str(runs), "seeds": seeds,
                                    "finetune": {**TINY, **base}, "models": models, "datasets": datasets}))
    return path


def _cells(runs: Path) -> dict[str, Path]:
    """Finished cell folders: name -> folder."""
    return {str(p.parent.relative_to(runs)): p.parent for p in runs.rglob("cell.json")
            if json.loads(p.read_text())["status"] == "done"}


def _attempts(runs: Path) -> list[dict]:
    reg = Registry(runs / "registry.sqlite")
    try:
        return reg.attempts()
    finally:
        reg.close()


# --------------------------------------------------------------------------------------------------
# Planning (no training)
# --------------------------------------------------------------------------------------------------

def test_plan_names_order_overrides_and_dependencies(tmp_path, monkeypatch):
    monkeypatch.setenv("QA_DIR", "/data/qa")
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    recipes = tmp_path / "finetune"
    recipes.mkdir()
    (recipes / "base.yaml").write_text("learning_rate: 3.0e-5\nmax_length: 384\ndoc_stride: 128\nseed: 1\n")
    (recipes / "long.yaml").write_text("inherit: base.yaml\nmax_length: 4096\ngradient_checkpointing: true\n")
    matrix = tmp_path / "m.yaml"
    matrix.write_text(f"""
description: planning test
runs_dir: ${{NOT_SET_ANYWHERE:-{tmp_path}/runs}}
seeds: [42, 7]
finetune: finetune/base.yaml
models:
  base: {{model: roberta-base}}
  long: {{model: roberta-base, convert: {{max_pos: 4096, attention_window: 512}}, finetune: finetune/long.yaml,
          per_device_train_batch_size: 2}}
datasets:
  xq: {{model_from: sq, eval_files: {{de: x.de.json, es: x.es.json}}, lang_normalisation: true}}
  sq:
    train_file: ${{QA_DIR}}/train.json
    eval_file: "${{QA_DIR}}/dev.json"
  sq3: {{concat: {{source: sq, k: 3}}, max_length: 512, models: [long]}}
""")
    p = plan(matrix)
    names = [c.name for c in p.cells]
    assert p.runs_dir == tmp_path / "runs"
    assert names[:5] == ["base/sq/seed-42", "base/xq-de/seed-42", "base/xq-es/seed-42",
                         "_models/long/convert", "long/sq/seed-42"]
    assert "base/sq3/seed-42" not in names and "long/sq3/seed-7" in names
    assert len(names) == 2 * 3 + 2 * 4 + 1
    by = {c.name: c for c in p.cells}
    # Precedence: recipe < model entry < dataset entry; the matrix sets model, seed and files.
    assert by["base/sq/seed-42"].kwargs["max_length"] == 384
    assert by["long/sq/seed-7"].kwargs["max_length"] == 4096
    assert by["long/sq3/seed-7"].kwargs["max_length"] == 512
    assert by["long/sq/seed-7"].kwargs["per_device_train_batch_size"] == 2
    assert by["long/sq/seed-7"].kwargs["gradient_checkpointing"] is True
    assert by["long/sq/seed-7"].kwargs["seed"] == 7
    assert by["long/sq/seed-7"].kwargs["model"] == str(tmp_path / "runs/_models/long/convert")
    assert by["long/sq/seed-7"].needs == ["_models/long/convert"]
    assert by["base/sq/seed-42"].kwargs["train_file"] == "/data/qa/train.json"
    assert by["long/sq3/seed-42"].kwargs["train_file"] == str(tmp_path / "runs/_data/sq.k3.neighbours.seed0/train.json")
    assert by["long/sq3/seed-42"].data == "sq3"
    # gold_position: a pinned slot is another dataset (its own folder); random is the default (no suffix)
    text = matrix.read_text()
    for position, suffix in (("last", True), ("random", False)):
        matrix.write_text(text.replace("concat: {source: sq, k: 3}", f"concat: {{source: sq, k: 3, gold_position: {position}}}"))
        pinned = {c.name: c for c in plan(matrix).cells}["long/sq3/seed-42"].kwargs["train_file"]
        assert (pinned != by["long/sq3/seed-42"].kwargs["train_file"]) is suffix
        assert pinned.startswith(str(tmp_path / "runs/_data/sq.k3.neighbours.seed0"))
    matrix.write_text(text)
    # Zero-shot cells evaluate the model their source cell trained (which therefore saves it).
    de = by["base/xq-de/seed-42"]
    # `longctx evaluate` scores with MLQA's normalisation itself (its `lang` field): no re-scoring step.
    assert de.kind == "evaluate" and de.kwargs["data"] == "x.de.json" and de.kwargs["lang"] == "de"
    assert de.lang is None
    assert de.kwargs["model"] == str(tmp_path / "runs/base/sq/seed-42/model") and de.needs == ["base/sq/seed-42"]
    assert by["base/sq/seed-42"].kwargs["save_model"] is True
    assert "learning_rate" not in de.kwargs
    assert p.datasets == ["sq", "xq-de", "xq-es", "sq3"]
    # --only keeps matching cells and what they need.
    only = plan(matrix, only=["*/xq-de/seed-7"], seeds=[7])
    assert [(c.name, c.dependency) for c in only.cells] == [
        ("base/sq/seed-7", True), ("base/xq-de/seed-7", False), ("_models/long/convert", True),
        ("long/sq/seed-7", True), ("long/xq-de/seed-7", False)]


@pytest.mark.parametrize("edit, message", [
    ({"datasets": {"sq": {"train_file": "t.json", "learning_rat": 1}}},
     r"datasets\.sq: unknown field\(s\) learning_rat"),
    ({"models": {"m": {"model": "x", "max_lenght": 3}}}, r"models\.m: unknown field\(s\) max_lenght"),
    ({"datasets": {"sq": {"train_file": "${NOT_SET_ANYWHERE}/t.json"}}},
     r"datasets\.sq\.train_file: \$\{NOT_SET_ANYWHERE\} is not set"),
    ({"datasets": {"x": {"eval_files": {"de": "d.json"}, "model_from": "nope"}}}, r"'nope' is not a dataset"),
    ({"models": {"m/x": {"model": "x"}}}, r"models\.m/x: name 'm/x'"),
    ({"seeds": [1, 1]}, r"seeds: repeated seed"),
    ({"extra": 1}, r"unknown key\(s\) extra"),
    ({"datasets": {"sq": {"train_file": "t.json"}, "sq3": {"concat": {"source": "sq", "gold_position": "end"}}}},
     r"datasets\.sq3\.concat: gold_position must be one of random, first, middle, last, got 'end'"),
])
def test_matrix_mistakes_are_one_line_errors(tmp_path, monkeypatch, edit, message):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    raw = {"seeds": [1], "models": {"m": {"model": "x"}}, "datasets": {"sq": {"train_file": "t.json"}}}
    for key, value in edit.items():
        raw[key] = value
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(LongctxError, match=message):
        plan(tmp_path / "m.yaml")


def test_seq2seq_cells_go_through_finetune_and_bind_the_t5_fields(tmp_path):
    """A `task: seq2seq` matrix plans finetune cells (the verb table's finetune, routed by its task field):
    zero-shot evaluation runs the same verb without training data, and extractive-only fields are refused."""
    from longctx.config import VERBS

    raw = {"seeds": [1], "finetune": {"task": "seq2seq", "max_source_length": 256},
           "models": {"t5": {"model": "t5-small"}},
           "datasets": {"sq": {"train_file": "t.json", "eval_file": "d.json"},
                        "xq": {"model_from": "sq", "eval_files": {"de": "de.json"}}}}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(raw))
    cells = {c.name: c for c in plan(tmp_path / "m.yaml", runs_dir=tmp_path / "runs").cells}
    train, evaluate = cells["t5/sq/seed-1"], cells["t5/xq-de/seed-1"]
    assert train.function == evaluate.function == VERBS["finetune"]
    assert train.kwargs["task"] == evaluate.kwargs["task"] == "seq2seq" and train.kwargs["save_model"] is True
    assert evaluate.kwargs["train_file"] is None and evaluate.kwargs["eval_file"] == "de.json"
    assert evaluate.kwargs["save_model"] is False and evaluate.kwargs["max_source_length"] == 256
    raw["datasets"]["sq"]["doc_stride"] = 64  # a field of extractive fine-tuning only
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(LongctxError, match=r"datasets\.sq: unknown field\(s\) doc_stride for 'finetune_seq2seq'"):
        plan(tmp_path / "m.yaml")


# --------------------------------------------------------------------------------------------------
# The sweep itself
# --------------------------------------------------------------------------------------------------

def _rows(db: Path, status: str) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(str(db), timeout=5) as conn:
            return conn.execute("SELECT count(*) FROM attempts WHERE status = ?", (status,)).fetchone()[0]
    except sqlite3.OperationalError:  # the sweep is still creating the schema
        return 0


def _kill_in_second_cell(cmd: list[str], cwd: Path, db: Path, log: Path) -> None:
    """Start the sweep, wait until the first cell is done and the next one is running, then kill -9 it."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        while _rows(db, "done") == 0 or _rows(db, "running") == 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"the sweep ended (status {proc.returncode}) before a cell finished:\n{log.read_text()}")
            time.sleep(0.05)
        time.sleep(0.5)  # inside the cell: loading the model or training
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_sweep_killed_mid_way_completes_on_rerun_and_report_equals_metrics(tmp_path, tiny_encoder_dir, qa_files):
    """2 tiny models x 2 datasets (plain, SQ3-style concatenation) x 2 seeds; kill -9 after the first cell."""
    runs = tmp_path / "runs"
    matrix = _matrix(tmp_path / "matrix.yaml",
                     {"bert": {"model": str(tiny_encoder_dir("bert"))},
                      "roberta": {"model": str(tiny_encoder_dir("roberta"))}},
                     {"qa": {"train_file": str(qa_files / "train.json"), "eval_file": str(qa_files / "dev.json")},
                      "qa3": {"concat": {"source": "qa", "k": 3}, "max_length": 96}},
                     seeds=[1, 2], runs=runs)
    cells = [c.name for c in plan(matrix).cells]
    assert len(cells) == 8

    _kill_in_second_cell([sys.executable, "-m", "longctx", "sweep", str(matrix), "--no-isolate"],
                           tmp_path, runs / "registry.sqlite", tmp_path / "first.log")
    finished = _cells(runs)
    assert 1 <= len(finished) < 8
    before = {name: ((f / "metrics.json").read_bytes(), (f / "metrics.json").stat().st_mtime_ns)
              for name, f in finished.items()}

    summary = sweep(str(matrix), isolate=False)
    outcomes = {c["cell"]: c["outcome"] for c in summary["cells"]}
    assert set(outcomes) == set(cells)
    assert {n for n, o in outcomes.items() if o in ("skipped", "adopted")} >= set(before)
    assert all(outcomes[n] in ("ran", "resumed") for n in cells if n not in before and outcomes[n] != "adopted")

    # Every cell finished exactly once; the finished ones were not touched.
    assert set(_cells(runs)) == set(cells)
    for name, (content, mtime) in before.items():
        assert (runs / name / "metrics.json").read_bytes() == content
        assert (runs / name / "metrics.json").stat().st_mtime_ns == mtime
    rows = _attempts(runs)
    for name in cells:
        assert sum(r["status"] == "done" for r in rows if r["cell"] == name) == 1, name
    killed = [r["cell"] for r in rows if r["status"] == "killed"]
    assert {r["status"] for r in rows} <= {"done", "killed"} and len(killed) <= 1
    if killed:  # the cell in flight was redone (or resumed) and is recorded once as done
        assert killed[0] not in before and outcomes[killed[0]] in ("ran", "resumed")
    for name in cells:
        assert folder_state(next(c for c in plan(matrix).cells if c.name == name), runs / name) == "complete"
        assert not (runs / name / "checkpoints").exists()  # removed once the cell is done
    # The concatenated data were built once, with a manifest.
    manifest = json.loads((runs / "_data/qa.k3.neighbours.seed0/manifest.json").read_text())
    assert manifest["params"]["k"] == 3 and set(manifest["sources"]) == {"train", "eval"}

    # A third run does nothing; the dry run says so.
    again = sweep(str(matrix), isolate=False)
    assert {c["outcome"] for c in again["cells"]} == {"skipped"}
    listing = sweep(str(matrix), dry_run=True)
    assert [c["status"] for c in listing["cells"]] == ["done"] * 8
    assert len(_attempts(runs)) == len(rows)

    # The report's numbers are the metrics.json figures: mean and sample std over seeds, and n.
    from longctx.report import report

    result = report(str(runs))
    expected = {}
    for name in cells:
        model, dataset, _ = name.split("/")
        ev = json.loads((runs / name / "metrics.json").read_text())["eval"]
        expected.setdefault((model, dataset), []).append((ev["exact_match"], ev["f1"]))
    assert {(r["model"], r["dataset"]) for r in result["rows"]} == set(expected)
    md = (runs / "report/report.md").read_text()
    for row in result["rows"]:
        values = expected[(row["model"], row["dataset"])]
        ems, f1s = [v[0] for v in values], [v[1] for v in values]
        assert row["n"] == 2
        assert row["em"]["mean"] == pytest.approx(statistics.fmean(ems), abs=1e-12)
        assert row["f1"]["mean"] == pytest.approx(statistics.fmean(f1s), abs=1e-12)
        assert row["f1"]["std"] == pytest.approx(statistics.stdev(f1s), abs=1e-12)
        line = (f"| {row['model']} | {row['dataset']} | {statistics.fmean(ems):.2f} ± {statistics.stdev(ems):.2f} | "
                f"{statistics.fmean(f1s):.2f} ± {statistics.stdev(f1s):.2f} | 2 | 1, 2 |")
        assert line in md
    assert (runs / "report/f1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_half_finished_and_unregistered_folders(tmp_path, tiny_encoder_dir, qa_files):
    """A half-written cell folder is moved aside (not deleted); a finished one the registry lacks is adopted;
    a cell killed after a checkpoint resumes from it."""
    from longctx.config import bind
    from longctx.finetune import finetune

    runs = tmp_path / "runs"
    data = {"qa": {"train_file": str(qa_files / "train.json"), "eval_file": str(qa_files / "dev.json")},
            # zero-shot evaluation of each seed's qa model, scored with MLQA's English normalisation
            "zs": {"model_from": "qa", "eval_files": {"en": str(qa_files / "dev.json")}, "lang_normalisation": True}}
    matrix = _matrix(tmp_path / "matrix.yaml", {"bert": {"model": str(tiny_encoder_dir("bert"))}}, data,
                     seeds=[1, 2, 3], runs=runs)
    cells = {c.name: c for c in plan(matrix).cells}
    assert cells["bert/qa/seed-2"].kwargs["save_model"] is True

    # seed-1: a folder a crash left behind (no metrics.json, no checkpoint).
    half = runs / "bert/qa/seed-1"
    half.mkdir(parents=True)
    (half / "cell.log").write_text("partial output\n")
    # seed-2: finished by hand with `longctx finetune`, unknown to the registry.
    done_by_hand = runs / "bert/qa/seed-2"
    finetune(**bind(finetune, {**cells["bert/qa/seed-2"].kwargs, "out": str(done_by_hand)}))
    hand_metrics = (done_by_hand / "metrics.json").read_bytes()
    # seed-3: killed after its last checkpoint, before writing metrics (same settings as the matrix).
    killed = runs / "bert/qa/seed-3"
    finetune(**bind(finetune, {**cells["bert/qa/seed-3"].kwargs, "out": str(killed)}))
    (killed / "metrics.json").unlink()
    (killed / "cell.json").write_text(json.dumps({"status": "running", "kwargs": cells["bert/qa/seed-3"].kwargs}))
    assert folder_state(cells["bert/qa/seed-3"], killed) == "resumable"

    listing = {c["cell"]: c["status"] for c in sweep(str(matrix), dry_run=True)["cells"]}
    assert listing == {"bert/qa/seed-1": "incomplete", "bert/qa/seed-2": "finished (not registered)",
                       "bert/qa/seed-3": "resumable", "bert/zs-en/seed-1": "todo", "bert/zs-en/seed-2": "todo",
                       "bert/zs-en/seed-3": "todo"}
    outcomes = {c["cell"]: c["outcome"] for c in sweep(str(matrix), isolate=False)["cells"]}
    assert outcomes == {"bert/qa/seed-1": "ran", "bert/qa/seed-2": "adopted", "bert/qa/seed-3": "resumed",
                        "bert/zs-en/seed-1": "ran", "bert/zs-en/seed-2": "ran", "bert/zs-en/seed-3": "ran"}
    zs = json.loads((runs / "bert/zs-en/seed-2/metrics.json").read_text())
    assert zs["model"] == str(done_by_hand / "model") and zs["eval"]["normalisation"] == "mlqa:en"
    aside = list((runs / "bert/qa").glob("seed-1.incomplete-*"))
    assert len(aside) == 1 and (aside[0] / "cell.log").read_text() == "partial output\n"
    assert (done_by_hand / "metrics.json").read_bytes() == hand_metrics
    assert (done_by_hand / "checkpoints").is_dir()  # a folder made outside the sweep keeps everything
    assert json.loads((killed / "metrics.json").read_text())["eval"]["eval_examples"] == 4
    notes = {r["cell"]: r["note"] for r in _attempts(runs)}
    assert "adopted" in notes["bert/qa/seed-2"] and "resumed" in notes["bert/qa/seed-3"]
    # The report leaves the moved-aside folder out.
    from longctx.report import report

    assert [(r["dataset"], r["n"]) for r in report(str(runs))["rows"]] == [("qa", 3), ("zs-en", 3)]


def test_isolated_cells_die_with_a_killed_sweep(tmp_path, tiny_encoder_dir, qa_files):
    """Default mode: each cell in a child process; kill -9 of the sweep takes the child down too, and the
    rerun completes the cell (resumed or moved aside, never half-reused)."""
    runs = tmp_path / "runs"
    data = {"qa": {"train_file": str(qa_files / "train.json"), "eval_file": str(qa_files / "dev.json")}}
    matrix = _matrix(tmp_path / "matrix.yaml", {"roberta": {"model": str(tiny_encoder_dir("roberta"))}}, data,
                     seeds=[5], runs=runs)
    db = runs / "registry.sqlite"
    with open(tmp_path / "first.log", "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "longctx", "sweep", str(matrix)], cwd=tmp_path, stdout=out,
                                stderr=subprocess.STDOUT)
        worker = None
        deadline = time.monotonic() + 300
        while worker is None:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "first.log").read_text()
            if db.exists():
                with contextlib.suppress(sqlite3.Error):  # the sweep may be creating the schema
                    with sqlite3.connect(str(db), timeout=5) as conn:
                        worker = conn.execute("SELECT worker_pid FROM attempts").fetchone()
                        worker = worker[0] if worker else None
            time.sleep(0.1)
        time.sleep(1.0)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 30
    while _alive(worker):
        assert time.monotonic() < deadline, f"cell process {worker} outlived the killed sweep"
        time.sleep(0.2)

    summary = sweep(str(matrix))  # isolated again
    assert [c["outcome"] for c in summary["cells"]] in (["ran"], ["resumed"], ["adopted"])
    rows = _attempts(runs)
    assert [r["status"] for r in rows][-1] == "done" and rows[0]["status"] in ("killed", "done")
    assert (runs / "roberta/qa/seed-5/cell.log").stat().st_size > 0


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True



def test_converted_model_is_prepared_once_and_its_pretraining_curve_is_reported(tmp_path, tiny_encoder_dir, qa_files):
    """convert + pretrain run once per model (in _models/), every seed fine-tunes the pretrained model, and the
    report plots the pretraining's MLM eval loss from its TensorBoard events."""
    from longctx.common import REPO_ROOT
    from longctx.report import report

    runs = tmp_path / "runs"
    fixtures = REPO_ROOT / "tests" / "fixtures"
    model = {"model": str(tiny_encoder_dir("roberta", max_positions=64)),
             "convert": {"max_pos": 256, "attention_window": 64},
             "pretrain": {"inherit": str(REPO_ROOT / "experiments/pretrain/tiny.yaml"),
                          "train_file": [str(fixtures / "wikitext_train.raw")],
                          "eval_file": str(fixtures / "wikitext_valid.raw"),
                          "max_steps": 4, "eval_steps": 2, "save_steps": 2},
             "max_length": 128, "doc_stride": 32}
    data = {"qa": {"train_file": str(qa_files / "train.json"), "eval_file": str(qa_files / "dev.json")}}
    matrix = _matrix(tmp_path / "matrix.yaml", {"tiny-long": model}, data, seeds=[1, 2], runs=runs)
    summary = sweep(str(matrix), isolate=False)
    assert [(c["cell"], c["outcome"]) for c in summary["cells"]] == [
        ("_models/tiny-long/convert", "ran"), ("_models/tiny-long/pretrain", "ran"),
        ("tiny-long/qa/seed-1", "ran"), ("tiny-long/qa/seed-2", "ran")]
    for seed in (1, 2):
        ran = json.loads((runs / f"tiny-long/qa/seed-{seed}/metrics.json").read_text())
        assert ran["model"] == str(runs / "_models/tiny-long/pretrain/model")
    pretrained = json.loads((runs / "_models/tiny-long/pretrain/metrics.json").read_text())
    assert pretrained["status"] == "done" and pretrained["train"]["global_step"] == 4
    result = report(str(runs))
    assert list(result["curves"]) == ["_models/tiny-long/pretrain"]
    assert [step for step, _ in result["curves"]["_models/tiny-long/pretrain"]] == [0, 2, 4]
    assert (runs / "report/mlm_loss.png").stat().st_size > 5000
    assert [(r["model"], r["dataset"], r["n"]) for r in result["rows"]] == [("tiny-long", "qa", 2)]


def test_a_dependency_busy_in_another_sweep_is_waited_for_not_skipped(tmp_path, tiny_encoder_dir, qa_files,
                                                                       warnings):
    """Two sweeps on one runs folder: when the other one holds a shared dependency (here the conversion), this one
    puts the dependent cells off, waits for the lock, and takes the dependency up (the other sweep died without
    finishing it, so it is run here), then runs the dependents -- none is left behind as busy."""
    import logging
    import threading

    from longctx.sweep.registry import cell_lock

    runs = tmp_path / "runs"
    model = {"model": str(tiny_encoder_dir("roberta", max_positions=64)),
             "convert": {"max_pos": 256, "attention_window": 64}, "max_length": 128, "doc_stride": 32}
    data = {"qa": {"train_file": str(qa_files / "train.json"), "eval_file": str(qa_files / "dev.json")}}
    matrix = _matrix(tmp_path / "matrix.yaml", {"tiny-long": model}, data, seeds=[1, 2], runs=runs)
    other = cell_lock(runs, "_models/tiny-long/convert")
    assert other.acquire()  # "another sweep" (a second open file: flock conflicts within one process too)
    threading.Timer(2.0, other.release).start()
    warnings.set_level(logging.INFO, logger="longctx")  # the wait is logged at INFO
    summary = sweep(str(matrix), isolate=False)
    assert "tiny-long/qa/seed-1: waiting for _models/tiny-long/convert" in warnings.text
    assert [(c["cell"], c["outcome"]) for c in summary["cells"]] == [
        ("_models/tiny-long/convert", "ran"), ("tiny-long/qa/seed-1", "ran"), ("tiny-long/qa/seed-2", "ran")]
    assert set(_cells(runs)) == {"_models/tiny-long/convert", "tiny-long/qa/seed-1", "tiny-long/qa/seed-2"}


def test_every_cell_is_checked_before_anything_starts(tmp_path, tiny_encoder_dir, qa_files, capsys):
    """Each cell's fields bound and checked with its verb's own checks (stride, the model's positions read
    from config.json, conversion sizes) and every input file checked, at plan time: --dry-run lists every
    error with its cell, and a real run starts nothing."""
    from longctx.cli import main

    runs = tmp_path / "runs"
    model = str(tiny_encoder_dir("bert", max_positions=128))  # 128 positions
    datasets = {"sq": {"train_file": str(qa_files / "train.json"), "eval_file": str(qa_files / "dev.json")},
                "wide": {"train_file": str(qa_files / "train.json"), "doc_stride": 40},  # >= max_length / 2
                "long": {"eval_file": str(qa_files / "dev.json"), "max_length": 256},  # > 128 positions
                "gone": {"train_file": str(tmp_path / "missing.json")}}
    models = {"tiny": {"model": model},
              "conv": {"model": model, "convert": {"max_pos": 100, "attention_window": 32}},
              "lost": {"model": str(tmp_path / "no-such-model")}}
    matrix = _matrix(tmp_path / "m.yaml", models, datasets, [1, 2], runs)
    for argv in (["sweep", str(matrix), "--dry-run"], ["sweep", str(matrix)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and not runs.exists()  # nothing started, nothing written
        lines = [line for line in err.splitlines() if line.startswith("[longctx]")]
        assert any("field 'doc_stride': 40 must be well below max_length 64" in line and "tiny/wide/seed-1" in line
                   and "tiny/wide/seed-2" in line for line in lines)
        assert any("field 'max_length': 256 is longer than the model's 128 positions" in line
                   and "tiny/long/seed-1" in line for line in lines)
        assert any(f"field 'train_file': {tmp_path / 'missing.json'} not found" in line for line in lines)
        assert any(f"field 'model': {tmp_path / 'no-such-model'} not found" in line and "lost/sq/seed-1" in line
                   for line in lines)
        assert any("max_pos 100 is not a multiple of the attention window 32" in line
                   and "_models/conv/convert" in line for line in lines)
        final = err.strip().splitlines()[-1]
        assert f"{matrix}:" in final and "cell error(s), nothing started" in final
    # --only leaves out the errors of cells it does not select.
    assert main(["sweep", str(matrix), "--dry-run", "--only", "tiny/sq/*"]) == 0  # its cells have no error
    assert "tiny/sq/seed-1" in capsys.readouterr().out
