"""`longctx sweep MATRIX.yaml`: every (model, dataset, seed) cell of an experiment matrix, crash-safe.

A matrix (format in docs/EXPERIMENTS.md) names models, datasets, seeds and a shared fine-tuning recipe.
`plan()` expands it into cells, each with its own folder `RUNS_DIR/<model>/<dataset>/seed-<seed>/`:

* finetune cells (`longctx finetune`), one per (model, dataset with training data, seed);
* evaluate cells (`longctx evaluate`), one per language of a dataset's `eval_files`, reusing the model
  trained by another cell (XQuAD/MLQA zero-shot: trained once on SQuAD, evaluated on every language);
* model preparation cells, once per converted model: `_models/<model>/convert` and `_models/<model>/pretrain`.

Crash safety. A cell is done when its folder holds metrics.json and cell.json with status "done" (written
last, atomically) and the registry (`RUNS_DIR/registry.sqlite`, SQLite in WAL mode with synchronous=FULL,
one row per attempt) has a "done" row. A rerun skips done cells and never touches their folders; a folder
left by a killed cell is resumed from its last Trainer checkpoint (when the settings are unchanged) or
moved aside to `<seed-N>.incomplete-<UTC time>`, never deleted. A finished folder the registry does not
know (killed between the two writes, or made by hand) is adopted, not redone. Each cell runs under an
exclusive lock file (`RUNS_DIR/.locks/`), so several sweeps on one runs folder (one per GPU) share the work.

Cells run in a child process by default (`isolate`): a crash, an out-of-memory kill or leaked GPU memory
stays in that cell, and the child dies with the sweep (Linux PR_SET_PDEATHSIG, plus a parent watchdog).
"""
from __future__ import annotations

import contextlib
import fnmatch
import gc
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable


from longctx.common import LongctxError, git_commit, log, read_json, run_metadata, write_json
from longctx.config import bind, load_recipe, parameters, read_yaml

MATRIX_KEYS = {"description", "runs_dir", "seeds", "finetune", "models", "datasets"}
# Keys of a model entry that are about the sweep; all other keys are fields of `longctx finetune`.
MODEL_KEYS = {"model", "convert", "pretrain", "finetune"}
# Keys of a dataset entry that are about the sweep; all other keys are fields of `longctx finetune`.
DATASET_KEYS = {"concat", "eval_files", "model_from", "models", "lang_normalisation"}
CONCAT_KEYS = {"source", "k", "distractors", "separator", "seed", "questions"}
CONCAT_DEFAULTS = {"k": 3, "distractors": "neighbours", "separator": "\n\n", "seed": 0, "questions": "all"}
# Fields the sweep sets itself in every call.
SWEEP_SET = {"out", "force", "resume"}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
REGISTRY = "registry.sqlite"
VERBS = {"convert": "longctx.convert:convert", "pretrain": "longctx.pretrain:pretrain",
         "finetune": "longctx.finetune:finetune", "evaluate": "longctx.finetune:evaluate",
         "seq2seq": "longctx.seq2seq:finetune_seq2seq"}


def _resolve(target: str) -> Callable:
    import importlib

    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


# --------------------------------------------------------------------------------------------------
# The matrix file
# --------------------------------------------------------------------------------------------------

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand(value: Any, where: str, strict: bool = True) -> Any:
    """`${VAR}` and `${VAR:-default}` from the environment, in every string of `value` (recursively).

    An unset variable without a default is an error naming `where`, unless not `strict` (dry runs),
    where it stays as written."""
    if isinstance(value, dict):
        return {k: expand(v, f"{where}.{k}", strict) for k, v in value.items()}
    if isinstance(value, list):
        return [expand(v, f"{where}[{i}]", strict) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        if os.environ.get(name):
            return os.environ[name]
        if default is not None:
            return default
        if strict:
            raise LongctxError(f"{where}: ${{{name}}} is not set (set it in the environment or in .env, "
                               f"or write ${{{name}:-default}})")
        return m.group(0)

    return _VAR.sub(sub, value)


@dataclass
class Cell:
    """One unit of work: a verb call with its own folder `runs_dir / name`."""

    name: str  # "roberta-base/squad/seed-42" or "_models/roberta-long/convert"
    kind: str  # convert | pretrain | finetune | evaluate
    function: str  # "module:function" of the verb it calls
    model: str  # model key in the matrix
    dataset: str | None  # dataset key (evaluate cells: "<dataset>-<lang>"); None for model preparation
    seed: int | None
    kwargs: dict[str, Any]  # the verb's fields, except out/force/resume which the sweep sets
    needs: list[str] = field(default_factory=list)  # cells that must be done first
    data: str | None = None  # concatenated dataset to build before running
    lang: str | None = None  # re-score with MLQA's normalisation for this language (when the verb cannot)
    dependency: bool = False  # selected only because a selected cell needs it

    def folder(self, runs_dir: Path) -> Path:
        return runs_dir / self.name


@dataclass
class Plan:
    matrix: Path
    description: str
    runs_dir: Path
    seeds: list[int]
    models: list[str]
    datasets: list[str]  # cell dataset names in table order (eval_files expanded to <dataset>-<lang>)
    cells: list[Cell]  # dependencies first
    data: dict[str, dict[str, Any]]  # concatenated datasets: name -> {"params", "sources", "dir"}
    groups: dict[str, list[str]] = field(default_factory=dict)  # dataset entry -> its cell datasets (languages)

    @property
    def registry(self) -> Path:
        return self.runs_dir / REGISTRY


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise LongctxError(f"{where}: must be a mapping of field: value")
    return value


def _check_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise LongctxError(f"{where}: name {name!r} must start with a letter or digit and use only "
                           f"letters, digits, '.', '_', '+' and '-' (it becomes a folder name)")
    return name


def _recipe(path: Any, base: Path, where: str, strict: bool) -> dict[str, Any]:
    """A recipe path (relative to the matrix file) or an inline mapping, whose `inherit:` is also relative
    to the matrix file (`pretrain: {inherit: pretrain/roberta-long.yaml, max_steps: 3000}`)."""
    if isinstance(path, dict):
        values = dict(path)
        parents = values.pop("inherit", None) or []
        merged: dict[str, Any] = {}
        for parent in [parents] if isinstance(parents, str) else parents:
            merged.update(load_recipe(base / parent))
        values.pop("description", None)
        return expand({**merged, **values}, where, strict)
    if not isinstance(path, str):
        raise LongctxError(f"{where}: must be a recipe path (relative to the matrix file) or a mapping")
    return expand(load_recipe(base / path), f"{base / path}", strict)


def load_matrix(path: str | os.PathLike, strict: bool = True) -> dict[str, Any]:
    """Read a matrix file: check its shape, load the referenced recipes and expand `${VAR}`s."""
    path = Path(path)
    raw = read_yaml(path, "matrix file")
    if not isinstance(raw, dict):
        raise LongctxError(f"{path}: a matrix must be a mapping (description, runs_dir, seeds, finetune, "
                           f"models, datasets)")
    unknown = sorted(k for k in raw if k not in MATRIX_KEYS and not str(k).startswith("x-"))
    if unknown:
        raise LongctxError(f"{path}: unknown key(s) {', '.join(map(str, unknown))} "
                           f"(known: {', '.join(sorted(MATRIX_KEYS))}; x-* keys are free for YAML anchors)")
    base = path.parent
    seeds = raw.get("seeds") or [42]
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise LongctxError(f"{path}: seeds: must be a list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise LongctxError(f"{path}: seeds: repeated seed in {seeds}")
    matrix: dict[str, Any] = {
        "path": path, "description": str(raw.get("description") or "").strip(), "seeds": seeds,
        "runs_dir": expand(raw.get("runs_dir"), f"{path}: runs_dir", strict),
        "finetune": _recipe(raw.get("finetune") or {}, base, f"{path}: finetune", strict),
        "models": {}, "datasets": {}}
    models = _mapping(raw.get("models"), f"{path}: models")
    datasets = _mapping(raw.get("datasets"), f"{path}: datasets")
    if not models or not datasets:
        raise LongctxError(f"{path}: needs at least one entry under models and under datasets")
    for name, entry in models.items():
        where = f"{path}: models.{name}"
        _check_name(name, where)
        entry = expand(dict(_mapping(entry, where)), where, strict)
        if not entry.get("model"):
            raise LongctxError(f"{where}: missing 'model' (hub name or folder)")
        if "convert" in entry:
            entry["convert"] = _mapping(entry["convert"] or {}, f"{where}.convert")
        if "pretrain" in entry:
            entry["pretrain_recipe"] = str(base / entry["pretrain"]) if isinstance(entry["pretrain"], str) else None
            entry["pretrain"] = _recipe(entry["pretrain"], base, f"{where}.pretrain", strict)
        if "finetune" in entry:
            entry["finetune"] = _recipe(entry["finetune"], base, f"{where}.finetune", strict)
        matrix["models"][name] = entry
    for name, entry in datasets.items():
        where = f"{path}: datasets.{name}"
        _check_name(name, where)
        entry = expand(dict(_mapping(entry, where)), where, strict)
        if "eval_files" in entry:
            files = _mapping(entry["eval_files"], f"{where}.eval_files")
            for lang in files:
                _check_name(str(lang), f"{where}.eval_files")
            entry["eval_files"] = {str(k): v for k, v in files.items()}
        if "models" in entry:
            names = entry["models"]
            if not isinstance(names, list) or any(m not in models for m in names):
                raise LongctxError(f"{where}.models: must list model names of this matrix "
                                   f"({', '.join(models)}), got {names!r}")
        if "concat" in entry:
            spec = _mapping(entry["concat"], f"{where}.concat")
            bad = sorted(set(spec) - CONCAT_KEYS)
            if bad or "source" not in spec:
                raise LongctxError(f"{where}.concat: needs 'source' (a dataset of this matrix); known fields: "
                                   f"{', '.join(sorted(CONCAT_KEYS))}{f'; unknown: {bad}' if bad else ''}")
            if spec["source"] not in datasets or "concat" in _mapping(datasets[spec["source"]], where):
                raise LongctxError(f"{where}.concat.source: {spec['source']!r} is not a dataset of this matrix "
                                   f"with files of its own")
            for key in ("train_file", "eval_file", "eval_files"):
                if key in entry:
                    raise LongctxError(f"{where}: a concat dataset takes its files from its source; "
                                       f"remove '{key}'")
        matrix["datasets"][name] = entry
    return matrix


def _data_name(source: str, params: dict[str, Any]) -> str:
    """Folder of a concatenated dataset under runs/_data, named by what it is made of, so datasets with the
    same construction (sq3-512 and sq3-4096) share one copy: squad.k3.neighbours.seed0[.<hash>]."""
    import hashlib

    name = f"{source}.k{params['k']}.{params['distractors']}.seed{params['seed']}"
    rest = {k: v for k, v in params.items() if k in ("separator", "questions") and v != CONCAT_DEFAULTS[k]}
    if rest:
        name += "." + hashlib.sha1(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:8]
    return name


def _dataset_order(datasets: dict[str, dict], where: Path) -> list[str]:
    """Datasets in file order, moved after the datasets they take models or data from."""
    order: list[str] = []

    def visit(name: str, stack: tuple[str, ...]) -> None:
        if name in order:
            return
        if name in stack:
            raise LongctxError(f"{where}: datasets: cycle {' -> '.join(stack + (name,))}")
        entry = datasets[name]
        for dep in (entry.get("model_from"), (entry.get("concat") or {}).get("source")):
            if dep:
                if dep not in datasets:
                    raise LongctxError(f"{where}: datasets.{name}: {dep!r} is not a dataset of this matrix")
                visit(dep, stack + (name,))
        order.append(name)

    for name in datasets:
        visit(name, ())
    return order


def _route(values: dict[str, Any]) -> str:
    return VERBS["seq2seq"] if values.get("task") == "seq2seq" else VERBS["finetune"]


def _check_fields(fn: Callable, layers: list[tuple[str, dict]], exclude: set[str]) -> None:
    known = set(parameters(fn))
    for where, values in layers:
        unknown = sorted(set(values) - known - exclude - {"description"})
        if unknown:
            raise LongctxError(f"{where}: unknown field(s) {', '.join(unknown)} for '{fn.__name__}' "
                               f"(known: {', '.join(sorted(known - SWEEP_SET))})")


def plan(matrix: str | os.PathLike, *, runs_dir: str | os.PathLike | None = None, seeds: list[int] | None = None,
         only: list[str] | None = None, strict: bool = True) -> Plan:
    """Expand a matrix file into cells (dependencies first); `only` keeps matching cells and their needs.

    `only` patterns (fnmatch) match a cell name ("roberta-base/squad/seed-42"), a model or a dataset name."""
    m = load_matrix(matrix, strict=strict)
    path: Path = m["path"]
    runs = Path(runs_dir or m["runs_dir"] or Path("runs") / path.stem)
    seeds = list(seeds) if seeds else m["seeds"]
    datasets: dict[str, dict] = m["datasets"]
    order = _dataset_order(datasets, path)
    base: dict[str, Any] = m["finetune"]

    # Files of each dataset (concatenated datasets: built under runs/_data/<name>/).
    data: dict[str, dict[str, Any]] = {}
    files: dict[str, dict[str, Any]] = {}
    for name in order:
        entry = datasets[name]
        if "concat" in entry:
            spec = dict(entry["concat"])
            source_name = spec.pop("source")
            source = files[source_name]
            params = {**CONCAT_DEFAULTS, **spec}
            folder = runs / "_data" / _data_name(source_name, params)
            sources: dict[str, str] = {}
            out: dict[str, Any] = {"train_file": None, "eval_file": None, "eval_files": {}}
            if source["train_file"]:
                sources["train"] = source["train_file"]
                out["train_file"] = str(folder / "train.json")
            if source["eval_file"]:
                sources["eval"] = source["eval_file"]
                out["eval_file"] = str(folder / "eval.json")
            for lang, f in source["eval_files"].items():
                sources[f"eval-{lang}"] = f
                out["eval_files"][lang] = str(folder / f"eval-{lang}.json")
            data[name] = {"params": params, "sources": sources, "dir": folder}
            files[name] = out
        else:
            files[name] = {"train_file": entry.get("train_file"), "eval_file": entry.get("eval_file"),
                           "eval_files": entry.get("eval_files") or {}}
        f = files[name]
        where = f"{path}: datasets.{name}"
        if not (f["train_file"] or f["eval_file"] or f["eval_files"]):
            raise LongctxError(f"{where}: needs train_file, eval_file or eval_files (or concat)")
        src = entry.get("model_from")
        if src:
            if f["train_file"]:
                raise LongctxError(f"{where}: has its own training data and model_from {src}: choose one")
            if not files[src]["train_file"]:
                raise LongctxError(f"{where}: model_from {src}, which trains nothing (no train_file)")

    cells: list[Cell] = []
    seen: set[str] = set()
    model_path: dict[str, tuple[str, list[str]]] = {}  # model key -> (path fine-tuning starts from, needs)
    table_datasets: dict[str, tuple[int, int, str]] = {}  # cell dataset -> (matrix order, language order, entry)

    def add(cell: Cell) -> None:
        cell.kwargs = {k: v for k, v in cell.kwargs.items() if k not in SWEEP_SET}
        if cell.name not in seen:
            seen.add(cell.name)
            cells.append(cell)

    for model_name, entry in m["models"].items():
        needs: list[str] = []
        start = entry["model"]
        if "convert" in entry:
            fn = _resolve(VERBS["convert"])
            _check_fields(fn, [(f"{path}: models.{model_name}.convert", entry["convert"])], {"model"})
            kwargs = {"model": start, **entry["convert"]}
            name = f"_models/{model_name}/convert"
            bind(fn, {**kwargs, "out": "-"}, source=f"{path}: models.{model_name}.convert")
            start, needs = str(runs / name), [name]
        if "pretrain" in entry:
            fn = _resolve(VERBS["pretrain"])
            recipe = dict(entry["pretrain"])
            where = entry.get("pretrain_recipe") or f"{path}: models.{model_name}.pretrain"
            _check_fields(fn, [(where, recipe)], set())
            kwargs = {**recipe, "model": start}
            bind(fn, {**kwargs, "out": "-"}, source=where)
            name = f"_models/{model_name}/pretrain"
            start, needs = str(runs / name / "model"), needs + [name]
        model_path[model_name] = (start, needs)

    for seed in seeds:
        for model_name, entry in m["models"].items():
            start, model_needs = model_path[model_name]
            if "convert" in entry and seed == seeds[0]:
                add(Cell(f"_models/{model_name}/convert", "convert", VERBS["convert"], model_name, None, None,
                         {"model": entry["model"], **entry["convert"]}))
            if "pretrain" in entry and seed == seeds[0]:
                converted = model_needs[0] if "convert" in entry else None
                add(Cell(f"_models/{model_name}/pretrain", "pretrain", VERBS["pretrain"], model_name, None, None,
                         {**entry["pretrain"], "model": str(runs / converted) if converted else entry["model"]},
                         needs=[converted] if converted else []))
            model_fields = {k: v for k, v in entry.items() if k not in MODEL_KEYS and k != "pretrain_recipe"}
            model_base = entry.get("finetune", base)
            for ds_name in order:
                ds = datasets[ds_name]
                if ds.get("models") and model_name not in ds["models"]:
                    continue
                f = files[ds_name]
                ds_fields = {k: v for k, v in ds.items()
                             if k not in DATASET_KEYS and k not in ("train_file", "eval_file")}
                values = {**model_base, **model_fields, **ds_fields, "model": start, "seed": seed,
                          "train_file": f["train_file"], "eval_file": f["eval_file"]}
                fn = _resolve(_route(values))
                _check_fields(fn, [(f"{path}: {'models.' + model_name + '.' if 'finetune' in entry else ''}finetune",
                                    model_base),
                                   (f"{path}: models.{model_name}", model_fields),
                                   (f"{path}: datasets.{ds_name}", ds_fields)], SWEEP_SET)
                where = f"{path}: {model_name} x {ds_name}"
                bind(fn, {**values, "out": "-"}, source=where)
                data_name = ds_name if "concat" in ds else None
                train_cell = None
                if f["train_file"]:
                    train_cell = f"{model_name}/{ds_name}/seed-{seed}"
                    add(Cell(train_cell, "finetune", _route(values), model_name, ds_name, seed, values,
                             needs=list(model_needs), data=data_name))
                    table_datasets.setdefault(ds_name, (order.index(ds_name), 0, ds_name))
                src = ds.get("model_from")
                if src:
                    if datasets[src].get("models") and model_name not in datasets[src]["models"]:
                        raise LongctxError(f"{path}: datasets.{ds_name}: model_from {src}, which does not run "
                                           f"model {model_name} (add it to datasets.{src}.models)")
                    train_cell = f"{model_name}/{src}/seed-{seed}"
                evals = dict(f["eval_files"])
                if not f["train_file"] and f["eval_file"]:
                    evals[""] = f["eval_file"]
                for lang, eval_file in evals.items():
                    ds_cell = f"{ds_name}-{lang}" if lang else ds_name
                    if ds_cell in datasets and lang:
                        raise LongctxError(f"{path}: datasets.{ds_name}.eval_files.{lang}: the cell name "
                                           f"{ds_cell} is also a dataset name; rename one")
                    eval_model = f"{runs / train_cell}/model" if train_cell else start
                    ev_values = {**values, "model": eval_model, "eval_file": eval_file, "train_file": None}
                    if values.get("task") == "seq2seq":
                        function, kwargs = VERBS["seq2seq"], {k: v for k, v in ev_values.items()
                                                              if k not in ("save_model",)}
                        kwargs["save_model"] = False
                    else:
                        function = VERBS["evaluate"]
                        known = parameters(_resolve(function))
                        kwargs = {k: v for k, v in ev_values.items() if k in known}
                        kwargs["data"] = eval_file
                    rescore = lang if ds.get("lang_normalisation") else None
                    if rescore and "lang" in parameters(_resolve(function)):
                        kwargs["lang"], rescore = lang, None  # the verb scores with the language itself
                    bind(_resolve(function), {**kwargs, "out": "-"}, source=where)
                    add(Cell(f"{model_name}/{ds_cell}/seed-{seed}", "evaluate", function, model_name, ds_cell, seed,
                             kwargs, needs=([train_cell] if train_cell else []) + list(model_needs), data=data_name,
                             lang=rescore or None))
                    table_datasets.setdefault(ds_cell, (order.index(ds_name), len(table_datasets), ds_name))

    by_name = {c.name: c for c in cells}
    for c in cells:  # a trained model that other cells evaluate must be saved
        for need in c.needs:
            if by_name[need].kind == "finetune":
                by_name[need].kwargs["save_model"] = True
    if only:
        wanted = {c.name for c in cells if any(fnmatch.fnmatchcase(x, p) for p in only
                                               for x in (c.name, c.model, c.dataset or ""))}
        if not wanted:
            raise LongctxError(f"{path}: --only {' '.join(only)} matches no cell (see --dry-run)")
        selected = set(wanted)
        stack = list(wanted)
        while stack:
            for need in by_name[stack.pop()].needs:
                if need not in selected:
                    selected.add(need)
                    stack.append(need)
        cells = [c for c in cells if c.name in selected]
        for c in cells:
            c.dependency = c.name not in wanted
    table_order = sorted(table_datasets, key=table_datasets.get)
    groups = {name: [d for d in table_order if table_datasets[d][2] == name] for name in order}
    return Plan(matrix=path, description=m["description"], runs_dir=runs, seeds=seeds, models=list(m["models"]),
                datasets=table_order, cells=cells, data=data, groups={k: v for k, v in groups.items() if v})


# --------------------------------------------------------------------------------------------------
# Registry and locks
# --------------------------------------------------------------------------------------------------

def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Registry:
    """Attempts of every cell in SQLite (WAL, synchronous=FULL): each statement is one atomic transaction,
    so a kill -9 at any point leaves the last committed state. A cell's latest row is its status; `done`
    rows hold the cell's evaluation metrics."""

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS attempts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        cell TEXT NOT NULL, kind TEXT NOT NULL, model TEXT, dataset TEXT, seed INTEGER,
        status TEXT NOT NULL,          -- running | done | failed | killed | interrupted
        started TEXT NOT NULL, ended TEXT, seconds REAL,
        host TEXT, pid INTEGER, worker_pid INTEGER, git_commit TEXT,
        run_dir TEXT, metrics TEXT, error TEXT, note TEXT);
    CREATE INDEX IF NOT EXISTS attempts_cell ON attempts (cell);
    CREATE VIEW IF NOT EXISTS cells AS
        SELECT * FROM attempts a WHERE a.id = (SELECT max(b.id) FROM attempts b WHERE b.cell = a.cell);
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
            self.conn.row_factory = sqlite3.Row
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.executescript(self.SCHEMA)
        except sqlite3.DatabaseError as e:
            raise LongctxError(f"{self.path}: cannot open the sweep registry ({e})") from None

    def close(self) -> None:
        self.conn.close()

    def start(self, cell: Cell, run_dir: Path, note: str | None = None, commit: str | None = None) -> int:
        cur = self.conn.execute(
            "INSERT INTO attempts (cell, kind, model, dataset, seed, status, started, host, pid, git_commit, "
            "run_dir, note) VALUES (?, ?, ?, ?, ?, 'running', ?, ?, ?, ?, ?, ?)",
            (cell.name, cell.kind, cell.model, cell.dataset, cell.seed, _now(), socket.gethostname(), os.getpid(),
             commit, str(run_dir), note))
        return int(cur.lastrowid)

    def set_worker(self, attempt: int, pid: int) -> None:
        self.conn.execute("UPDATE attempts SET worker_pid = ? WHERE id = ?", (pid, attempt))

    def finish(self, attempt: int, status: str, *, metrics: Any = None, error: str | None = None,
               note: str | None = None) -> None:
        self.conn.execute(
            "UPDATE attempts SET status = ?, ended = ?, seconds = round((julianday(?) - julianday(started)) * 86400), "
            "metrics = coalesce(?, metrics), error = coalesce(?, error), note = coalesce(?, note) WHERE id = ?",
            (status, _now(), _now(), None if metrics is None else json.dumps(metrics), error, note, attempt))

    def adopt(self, cell: Cell, run_dir: Path, attempt: int | None, metrics: Any, note: str) -> None:
        """Record a finished folder as done: its own (interrupted) attempt row when it has one, else a new row."""
        row = self.conn.execute("SELECT status FROM attempts WHERE id = ? AND cell = ?",
                                (attempt, cell.name)).fetchone() if attempt else None
        if row is None:
            attempt = self.start(cell, run_dir, note=note)
        self.finish(attempt, "done", metrics=metrics, note=note)

    def mark_stale(self, cell: str) -> int:
        """Rows still 'running' for a cell whose lock we hold belong to a sweep that was killed."""
        cur = self.conn.execute("UPDATE attempts SET status = 'killed', note = coalesce(note, "
                                "'found running by a later sweep: killed') WHERE cell = ? AND status = 'running'",
                                (cell,))
        return cur.rowcount

    def done(self, cell: str) -> bool:
        return self.conn.execute("SELECT 1 FROM attempts WHERE cell = ? AND status = 'done' LIMIT 1",
                                 (cell,)).fetchone() is not None

    def attempts(self, cell: str | None = None) -> list[dict[str, Any]]:
        rows = (self.conn.execute("SELECT * FROM attempts WHERE cell = ? ORDER BY id", (cell,)) if cell
                else self.conn.execute("SELECT * FROM attempts ORDER BY id"))
        return [dict(r) for r in rows]


class _Lock:
    """An exclusive, non-blocking flock on a file; the kernel drops it when its process dies."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def acquire(self, blocking: bool = False) -> bool:
        try:
            import fcntl
        except ImportError:  # not POSIX: no cross-process locking
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "another process"
        except OSError:
            return "another process"


def _lock(runs_dir: Path, name: str) -> _Lock:
    return _Lock(runs_dir / ".locks" / (name.replace("/", "__") + ".lock"))


# --------------------------------------------------------------------------------------------------
# Cell folders
# --------------------------------------------------------------------------------------------------

def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
        return value if isinstance(value, dict) else None
    except (OSError, ValueError):
        return None


def _comparable(kwargs: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps({k: v for k, v in kwargs.items() if k not in SWEEP_SET}, default=str))


def _has_checkpoint(folder: Path) -> bool:
    return any((folder / "checkpoints").glob("checkpoint-*"))


def folder_state(cell: Cell, folder: Path) -> str:
    """absent | complete | resumable | incomplete (see the module docstring)."""
    if not folder.exists():
        return "absent"
    info = _read(folder / "cell.json")
    metrics = _read(folder / "metrics.json")
    if info and info.get("status") == "done":
        return "complete"
    if metrics is not None and metrics.get("status", "done") == "done" and cell.kind != "convert":
        return "complete"  # the verb finished; only the sweep's own bookkeeping was cut short
    if info and _comparable(info.get("kwargs", {})) == _comparable(cell.kwargs) and _has_checkpoint(folder):
        return "resumable"
    return "incomplete"


def _move_aside(folder: Path) -> Path | None:
    """Rename an unfinished folder to <name>.incomplete-<UTC time> (an empty one is just removed)."""
    if not any(folder.iterdir()):
        folder.rmdir()
        return None
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = folder.with_name(f"{folder.name}.incomplete-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = folder.with_name(f"{folder.name}.incomplete-{stamp}-{n}")
    os.rename(folder, target)
    _fsync_dir(folder.parent)
    return target


def _summary(metrics: dict[str, Any] | None) -> dict[str, Any]:
    """What the registry keeps of a metrics.json: the evaluation figures (or a pretraining run's final ones)."""
    if not metrics:
        return {}
    if isinstance(metrics.get("eval"), dict):
        return metrics["eval"]
    trained = (metrics.get("after") or {}).get("trained")
    return dict(trained) if isinstance(trained, dict) else {}


def _describe(summary: dict[str, Any]) -> str:
    em = summary.get("exact_match", summary.get("exact"))
    if em is not None and "f1" in summary:
        return f"EM {em:.2f} F1 {summary['f1']:.2f}"
    if "loss" in summary:
        return f"MLM eval loss {summary['loss']:.4f}"
    return ""


def _rescore(folder: Path, cell: Cell) -> None:
    """MLQA: re-score predictions with the language's answer normalisation (MLQA's official script)."""
    from longctx.data.squad import load_squad
    from longctx.qa.metrics import compute_metrics, read_predictions

    metrics = read_json(folder / "metrics.json", "metrics")
    if "eval_squad_normalisation" in metrics:
        return
    predictions = read_predictions(str(folder / "predictions.json"))
    gold = load_squad(cell.kwargs["data"])
    examples = [e for e in gold.examples if e["id"] in predictions]
    scored = compute_metrics(predictions, examples=examples, version=gold.version, lang=cell.lang)
    ev = metrics.get("eval", {})
    metrics["eval_squad_normalisation"] = {k: ev.get(k) for k in ("exact_match", "f1")}
    metrics["eval"] = {**ev, **scored, "normalisation": f"mlqa:{cell.lang}"}
    write_json(folder / "metrics.json", metrics)


# --------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------

def _die_with_parent() -> None:
    """In a cell's child process: exit when the sweep that started it dies (even by kill -9)."""
    parent = int(os.environ.get("LONGCTX_SWEEP_PARENT", "0") or 0)
    if not parent:
        return
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)

    def watch() -> None:  # portable fallback (macOS): orphans are re-parented
        while True:
            time.sleep(2)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="longctx-sweep-watchdog").start()


def _call(function: str, kwargs: dict[str, Any], source: str) -> Any:
    fn = _resolve(function)
    bound = bind(fn, kwargs, source=source)
    positional = [bound.pop(n) for n, p in parameters(fn).items() if p.kind is p.POSITIONAL_ONLY and n in bound]
    return fn(*positional, **bound)


def _worker(folder: str) -> int:
    """Entry point of a cell's child process: `python -m longctx.sweep CELL_FOLDER` runs cell.json's call."""
    from longctx.common import setup_logging

    _die_with_parent()
    setup_logging()
    info = read_json(Path(folder) / "cell.json", "cell file")
    try:
        _call(info["function"], info["call"], source=f"{folder}/cell.json")
    except LongctxError as e:
        print(f"longctx sweep: {info['cell']}: error: {e}", file=sys.stderr)
        return 2
    return 0


def _tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    text = text.replace("\r", "\n")
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


def _run_child(cell: Cell, folder: Path, registry: Registry, attempt: int) -> str | None:
    """Run the cell in `python -m longctx.sweep FOLDER`; returns an error text or None."""
    env = dict(os.environ)
    env.update(LONGCTX_SWEEP_PARENT=str(os.getpid()), PYTHONUNBUFFERED="1")
    env.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    env.setdefault("TQDM_DISABLE", "1")
    with open(folder / "cell.log", "ab") as logfile:
        child = subprocess.Popen([sys.executable, "-m", "longctx.sweep", str(folder)], stdout=logfile,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        registry.set_worker(attempt, child.pid)
        try:
            code = child.wait()
        except KeyboardInterrupt:  # Ctrl-C reached the child too; give it a moment to stop
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            raise
    if code == 0:
        return None
    reason = f"exit status {code}" if code > 0 else f"killed by signal {-code}"
    return f"{reason}: {_tail(folder / 'cell.log', 8)}"


def _run_here(cell: Cell, folder: Path, call: dict[str, Any]) -> str | None:
    """Run the cell in this process (--no-isolate); the longctx log and stdout go to cell.log."""
    import logging
    import traceback

    handler = logging.FileHandler(folder / "cell.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("[longctx] %(message)s"))
    log.addHandler(handler)
    try:
        with open(folder / "cell.log", "a", encoding="utf-8") as out, contextlib.redirect_stdout(out):
            try:
                _call(cell.function, call, source=f"{folder}/cell.json")
            except LongctxError as e:
                out.write(f"error: {e}\n")
                return str(e)
            except Exception as e:  # a cell's crash must not end the sweep
                out.write(traceback.format_exc())
                return f"{type(e).__name__}: {e}"
    finally:
        log.removeHandler(handler)
        handler.close()
        gc.collect()
        with contextlib.suppress(Exception):
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return None


def ensure_data(p: Plan, name: str) -> None:
    """Build a concatenated dataset under runs/_data/<name>/ once; refuse to reuse one built differently."""
    from longctx.data.concat import concat_file, sha256

    spec = p.data[name]
    folder: Path = spec["dir"]
    lock = _lock(p.runs_dir, f"_data/{folder.name}")
    lock.acquire(blocking=True)
    try:
        sources = {key: {"path": src, "sha256": sha256(src) if Path(src).is_file() else None}
                   for key, src in spec["sources"].items()}
        manifest = _read(folder / "manifest.json")
        if manifest is not None:
            same = manifest.get("params") == spec["params"] and all(
                (manifest.get("sources", {}).get(k) or {}).get("sha256") == v["sha256"]
                and (v["sha256"] is not None or manifest["sources"][k]["path"] == v["path"])
                for k, v in sources.items())
            if same:
                return
            raise LongctxError(f"{folder}: was built from other source files or parameters than "
                               f"datasets.{name} now names; move the folder away to rebuild it")
        log.info("building %s (k=%s, %s) in %s", name, spec["params"]["k"], spec["params"]["distractors"], folder)
        built = {}
        for key, src in spec["sources"].items():
            built[key] = concat_file(src, folder / f"{key}.json", **spec["params"])
        write_json(folder / "manifest.json", {"params": spec["params"], "sources": sources, "built": built,
                                              **run_metadata()})
    finally:
        lock.release()


def _preflight(p: Plan, cells: list[Cell]) -> None:
    """Missing input files are reported before hours of compute, not after."""
    missing: dict[str, list[str]] = {}  # file -> what needs it
    inside = str(p.runs_dir.resolve())

    def check(value: Any, what: str) -> None:
        if not isinstance(value, str) or str(Path(value).resolve()).startswith(inside):
            return
        if (value.endswith(".json") or value.startswith(("/", "./", "../"))) and not Path(value).exists():
            missing.setdefault(value, []).append(what)

    for cell in cells:
        for key in ("train_file", "eval_file", "data"):
            check(cell.kwargs.get(key), f"{key} of {cell.name}")
    for name, spec in p.data.items():
        if any(c.data == name for c in cells):
            for src in spec["sources"].values():
                check(src, f"source of datasets.{name}")
    if missing:
        parts = [f"{path} not found ({users[0]}{f' and {len(users) - 1} more' if len(users) > 1 else ''})"
                 for path, users in list(missing.items())[:3]]
        more = f"; and {len(missing) - 3} more missing files" if len(missing) > 3 else ""
        raise LongctxError(f"{p.matrix}: {'; '.join(parts)}{more}")


@dataclass
class _Options:
    isolate: bool
    resume: bool
    keep_checkpoints: bool
    commit: str | None


def _finalize(p: Plan, cell: Cell, folder: Path, registry: Registry, opts: _Options, attempt: int | None,
              note: str | None = None) -> dict[str, Any]:
    """Post-steps (idempotent), then the done marker (cell.json) and the registry's done row."""
    info = _read(folder / "cell.json")
    ours = info is not None
    metrics = _read(folder / "metrics.json")
    if cell.lang and metrics is not None:
        _rescore(folder, cell)
        metrics = _read(folder / "metrics.json")
    if ours and not opts.keep_checkpoints and (folder / "checkpoints").is_dir():
        shutil.rmtree(folder / "checkpoints")
    summary = _summary(metrics)
    if info is None:
        info = _cell_info(p, cell, None, opts)
        info["note"] = "finished outside the sweep; adopted"
    if info.get("status") != "done":
        info.update(status="done", ended=_now(), summary=summary)
        write_json(folder / "cell.json", info)
        _fsync_dir(folder)
    if attempt is not None:
        registry.finish(attempt, "done", metrics=summary, note=note)
    else:
        registry.adopt(cell, folder, info.get("attempt"), summary,
                       note or "finished folder found without a registry record: adopted")
    return summary


def _cell_info(p: Plan, cell: Cell, attempt: int | None, opts: _Options) -> dict[str, Any]:
    return {"cell": cell.name, "kind": cell.kind, "model": cell.model, "dataset": cell.dataset, "seed": cell.seed,
            "lang": cell.lang, "function": cell.function, "kwargs": cell.kwargs, "matrix": str(p.matrix),
            "attempt": attempt, "status": "running", "started": _now(), "host": socket.gethostname(),
            "git_commit": opts.commit}


def _run_cell(p: Plan, cell: Cell, registry: Registry, opts: _Options) -> tuple[str, str]:
    """Run or skip one cell under its lock; returns (outcome, detail)."""
    folder = cell.folder(p.runs_dir)
    lock = _lock(p.runs_dir, cell.name)
    if not lock.acquire():
        return "busy", f"running in another sweep ({lock.holder()})"
    try:
        state = folder_state(cell, folder)
        if state == "complete":
            if registry.done(cell.name) and (_read(folder / "cell.json") or {}).get("status") == "done":
                return "skipped", "done"
            try:
                summary = _finalize(p, cell, folder, registry, opts, None)
            except (LongctxError, OSError, ValueError, KeyError) as e:
                return "failed", f"finished folder, but completing it failed: {e}"
            registry.mark_stale(cell.name)
            return "adopted", _describe(summary)
        stale = registry.mark_stale(cell.name)
        earlier = registry.attempts(cell.name)
        resume = (state == "resumable" and opts.resume and "resume" in parameters(_resolve(cell.function))
                  # a resume that failed is not tried twice: the checkpoint itself may be the problem
                  and not (earlier and earlier[-1]["status"] == "failed" and
                           (earlier[-1]["note"] or "").startswith("resumed")))
        if state in ("resumable", "incomplete") and not resume:
            moved = _move_aside(folder)
            if moved:
                log.info("%s: unfinished folder moved aside to %s", cell.name, moved)
        if cell.data:
            ensure_data(p, cell.data)
        model = str(cell.kwargs.get("model", ""))
        if cell.kind == "evaluate" and model.startswith(str(p.runs_dir)) and not Path(model).exists():
            error = (f"{model} not found: {cell.needs[0] if cell.needs else 'the training cell'} finished without "
                     f"saving its model (save_model: false); move that cell's folder aside so it is retrained")
            registry.finish(registry.start(cell, folder, commit=opts.commit), "failed", error=error)
            return "failed", error
        note = "resumed from the last checkpoint" if resume else ("earlier attempt killed" if stale else None)
        attempt = registry.start(cell, folder, note=note, commit=opts.commit)
        folder.mkdir(parents=True, exist_ok=resume)
        info = _cell_info(p, cell, attempt, opts)
        info["call"] = {**cell.kwargs, "out": str(folder), **({"resume": True} if resume else {"force": True})}
        write_json(folder / "cell.json", info)
        try:
            error = (_run_child(cell, folder, registry, attempt) if opts.isolate
                     else _run_here(cell, folder, info["call"]))
        except KeyboardInterrupt:
            registry.finish(attempt, "interrupted", error="interrupted (Ctrl-C)")
            raise
        if error is None and cell.kind != "convert" and not (folder / "metrics.json").is_file():
            error = "finished without writing metrics.json"
        if error is None:
            try:
                summary = _finalize(p, cell, folder, registry, opts, attempt)
                return ("resumed" if resume else "ran"), _describe(summary)
            except (LongctxError, OSError, ValueError, KeyError) as e:
                error = f"after the run: {e}"
        registry.finish(attempt, "failed", error=error[-4000:])
        info.update(status="failed", ended=_now(), error=error[-2000:])
        write_json(folder / "cell.json", info)
        return "failed", error.strip().splitlines()[-1][:300] if error.strip() else "failed"
    finally:
        lock.release()


def cell_status(p: Plan, cell: Cell, registry: Registry | None) -> str:
    """What a dry run shows for a cell: done | done (settings changed) | finished (not registered) | running |
    resumable | incomplete | failed N x | todo."""
    folder = cell.folder(p.runs_dir)
    state = folder_state(cell, folder)
    attempts = registry.attempts(cell.name) if registry else []
    if state == "complete":
        info = _read(folder / "cell.json") or {}
        if not any(a["status"] == "done" for a in attempts) or info.get("status") != "done":
            return "finished (not registered)"
        if _comparable(info.get("kwargs", {})) != _comparable(cell.kwargs):
            return "done (settings changed)"
        return "done"
    lock = _lock(p.runs_dir, cell.name)
    if lock.path.exists():
        if not lock.acquire():
            return "running"
        lock.release()
    failed = sum(a["status"] == "failed" for a in attempts)
    if state in ("resumable", "incomplete"):
        return state
    return f"todo (failed {failed}x before)" if failed else "todo"


def _print_plan(p: Plan, statuses: list[str]) -> None:
    width = max([len(c.name) for c in p.cells] + [4])
    print(f"matrix {p.matrix} -> {p.runs_dir} (registry {p.registry})")
    print(f"  {'status':<26} {'cell':<{width}}  step")
    for cell, status in zip(p.cells, statuses):
        extra = " (dependency)" if cell.dependency else ""
        print(f"  {status:<26} {cell.name:<{width}}  {cell.kind}{extra}")
    done = sum(s.startswith("done") for s in statuses)
    print(f"{len(p.cells)} cells: {done} done, {len(p.cells) - done} to run")


def sweep(matrix: str, /, *, runs_dir: str | None = None, dry_run: bool = False, only: list[str] | None = None,
          seeds: list[int] | None = None, isolate: bool = True, resume: bool = True,
          keep_checkpoints: bool = False, fail_fast: bool = False) -> dict[str, Any]:
    """Run every (model, dataset, seed) cell of an experiment matrix; a rerun completes what is missing.

    Args:
        matrix: matrix YAML file (models, datasets, seeds, shared fine-tuning recipe; see docs/EXPERIMENTS.md).
        runs_dir: output root (default: the matrix's runs_dir, else runs/<matrix name>).
        dry_run: list the cells and their status (done, todo, resumable, ...) and run nothing.
        only: run only cells whose name, model or dataset matches one of these patterns (fnmatch,
            e.g. 'roberta-base' or '*/sq3-*/seed-42'); the cells they need run too.
        seeds: seeds to run instead of the matrix's.
        isolate: run each cell in a child process (a crash or leaked memory stays in that cell).
        resume: continue an interrupted cell from its last checkpoint when its settings are unchanged
            (otherwise its folder is moved aside and the cell starts over).
        keep_checkpoints: keep each finished cell's checkpoints/ folder (default: deleted once the cell is done).
        fail_fast: stop at the first failed cell (default: record it and go on with the others).
    """
    p = plan(matrix, runs_dir=runs_dir, seeds=seeds, only=only, strict=not dry_run)
    if dry_run:
        registry = Registry(p.registry) if p.registry.exists() else None
        statuses = [cell_status(p, c, registry) for c in p.cells]
        if registry:
            registry.close()
        _print_plan(p, statuses)
        return {"runs_dir": str(p.runs_dir),
                "cells": [{"cell": c.name, "kind": c.kind, "status": s, "dependency": c.dependency}
                          for c, s in zip(p.cells, statuses)]}

    _preflight(p, [c for c in p.cells if folder_state(c, c.folder(p.runs_dir)) != "complete"])
    registry = Registry(p.registry)
    opts = _Options(isolate=isolate, resume=resume, keep_checkpoints=keep_checkpoints, commit=git_commit())
    todo = [c for c in p.cells if folder_state(c, c.folder(p.runs_dir)) != "complete" or not registry.done(c.name)]
    todo_names = {c.name for c in todo}
    write_json(p.runs_dir / "sweep.json", {
        "matrix": str(p.matrix), "description": p.description, "models": p.models, "datasets": p.datasets,
        "groups": p.groups,
        "seeds": p.seeds, "cells": len(p.cells), "updated": _now(), **run_metadata()})
    log.info("sweep %s: %d cells, %d done, %d to run -> %s", p.matrix, len(p.cells), len(p.cells) - len(todo),
             len(todo), p.runs_dir)
    outcome: dict[str, tuple[str, str]] = {}
    started = time.perf_counter()
    n = 0
    try:
        for cell in p.cells:
            waiting = [need for need in cell.needs if outcome.get(need, ("skipped",))[0] not in
                       ("skipped", "adopted", "ran", "resumed")]
            if waiting:
                why = outcome[waiting[0]][0]
                outcome[cell.name] = ("busy" if why == "busy" else "blocked", f"needs {waiting[0]} ({why})")
                log.warning("%s: not run: %s", cell.name, outcome[cell.name][1])
                continue
            if cell.name in todo_names:
                n += 1
                log.info("[%d/%d] %s: %s", n, len(todo), cell.name, cell.kind)
            t0 = time.perf_counter()
            outcome[cell.name] = _run_cell(p, cell, registry, opts)
            kind, detail = outcome[cell.name]
            if kind == "failed":
                log.error("%s: failed: %s (log: %s)", cell.name, detail, cell.folder(p.runs_dir) / "cell.log")
                if fail_fast:
                    break
            elif kind != "skipped":
                log.info("%s: %s in %.0f s%s", cell.name, kind, time.perf_counter() - t0,
                         f": {detail}" if detail else "")
    finally:
        registry.close()
    counts: dict[str, int] = {}
    for kind, _ in outcome.values():
        counts[kind] = counts.get(kind, 0) + 1
    log.info("sweep finished in %.0f s: %s", time.perf_counter() - started,
             ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    bad = [name for name, (kind, _) in outcome.items() if kind in ("failed", "blocked")]
    busy = [name for name, (kind, _) in outcome.items() if kind == "busy"]
    if busy:
        log.warning("%d cells are running in another sweep; rerun afterwards to pick up anything left", len(busy))
    if bad:
        raise LongctxError(f"{len(bad)} of {len(p.cells)} cells did not finish ({', '.join(bad[:3])}"
                           f"{', ...' if len(bad) > 3 else ''}); see their cell.log and {p.registry}; "
                           f"rerun the sweep to retry them")
    return {"runs_dir": str(p.runs_dir), "counts": counts,
            "cells": [{"cell": name, "outcome": kind, "detail": detail} for name, (kind, detail) in outcome.items()]}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m longctx.sweep CELL_FOLDER (used by `longctx sweep` to run one cell)")
    sys.exit(_worker(sys.argv[1]))
