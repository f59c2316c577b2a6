"""Matrix -> plan: the cells of a sweep matrix, each a verb call with its own folder, checked up front.

`plan()` expands a matrix file (format in docs/EXPERIMENTS.md) into cells, each with its own folder
`RUNS_DIR/<model>/<dataset>/seed-<seed>/`:

* finetune cells (`longctx finetune`), one per (model, dataset with training data, seed);
* evaluate cells (`longctx evaluate`), one per language of a dataset's `eval_files`, reusing the model
  trained by another cell (XQuAD/MLQA zero-shot: trained once on SQuAD, evaluated on every language);
* model preparation cells, once per converted model: `_models/<model>/convert` and `_models/<model>/pretrain`.

Every cell's fields are bound against its verb and checked with the verb's own cheap checks (`_VALUE_CHECKS`:
window sizes, strides, the model's positions read from its config.json), and, for a sweep on this machine
(`check_files`), every input file must exist: all errors are listed (cell, field, value) and the plan fails
before anything runs. Planning runs nothing: `longctx kfp` renders the same plan (its files live on the cluster).
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

from longctx.common import LongctxError, log, read_json_object
from longctx.config import (VERBS, bind, inherit, load_recipe, parameters, read_yaml, resolve, resolved_config,
                            select)

MATRIX_KEYS = {"description", "runs_dir", "seeds", "finetune", "models", "datasets"}
# Keys of a model entry that are about the sweep; all other keys are fields of `longctx finetune`.
MODEL_KEYS = {"model", "convert", "pretrain", "finetune"}
# Keys of a dataset entry that are about the sweep; all other keys are fields of `longctx finetune`.
DATASET_KEYS = {"concat", "eval_files", "model_from", "models", "lang_normalisation"}
CONCAT_KEYS = {"source", "k", "distractors", "separator", "seed", "questions", "gold_position"}
CONCAT_DEFAULTS = {"k": 3, "distractors": "neighbours", "separator": "\n\n", "seed": 0, "questions": "all"}
# Fields the sweep sets itself in every call.
SWEEP_SET = {"out", "force", "resume"}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
REGISTRY = "registry.sqlite"


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
    to the matrix file (`pretrain: {inherit: pretrain/roberta-long.yaml, max_steps: 3000}`); both resolve
    `inherit:` with the one rule of recipe files (longctx.config.inherit)."""
    if isinstance(path, dict):
        return expand(inherit(path, base), where, strict)
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
            if "gold_position" in spec:
                from longctx.data.concat import gold_slot

                try:
                    gold_slot(spec["gold_position"], 3, 0)
                except LongctxError as e:
                    raise LongctxError(f"{where}.{e}") from None
            for key in ("train_file", "eval_file", "eval_files"):
                if key in entry:
                    raise LongctxError(f"{where}: a concat dataset takes its files from its source; "
                                       f"remove '{key}'")
        matrix["datasets"][name] = entry
    return matrix


def _data_name(source: str, params: dict[str, Any]) -> str:
    """Folder of a concatenated dataset under runs/_data, named by what it is made of, so datasets with the
    same construction (sq3-512 and sq3-4096) share one copy: squad.k3.neighbours.seed0[.<hash>]."""
    name = f"{source}.k{params['k']}.{params['distractors']}.seed{params['seed']}"
    rest = {k: v for k, v in params.items() if k in ("separator", "questions", "gold_position")
            and v != CONCAT_DEFAULTS.get(k)}
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


def _check_fields(fn: Callable, layers: list[tuple[str, dict]], exclude: set[str]) -> None:
    """Each layer's fields must be fields of `fn`, so an error names the file or entry that has the typo."""
    known = set(parameters(fn))
    for where, values in layers:
        unknown = sorted(set(values) - known - exclude - {"description"})
        if unknown:
            raise LongctxError(f"{where}: unknown field(s) {', '.join(unknown)} for '{fn.__name__}' "
                               f"(known: {', '.join(sorted(known - SWEEP_SET))})")


def _verb(function: str, values: dict[str, Any]) -> Callable:
    """The function a cell with `values` runs (finetune's `task` may select another one: config.select)."""
    return select(resolve(function), values)


def plan(matrix: str | os.PathLike, *, runs_dir: str | os.PathLike | None = None, seeds: list[int] | None = None,
         only: list[str] | None = None, strict: bool = True, check_files: bool = False) -> Plan:
    """Expand a matrix file into cells (dependencies first); `only` keeps matching cells and their needs.

    `only` patterns (fnmatch) match a cell name ("roberta-base/squad/seed-42"), a model or a dataset name.
    `check_files`: every input file of the selected cells must exist here (a sweep; not kfp, whose files are
    on the cluster). All errors of the selected cells are raised together, as one line."""
    m = load_matrix(matrix, strict=strict)
    path: Path = m["path"]
    runs = Path(runs_dir or m["runs_dir"] or Path("runs") / path.stem)
    seeds = list(seeds) if seeds else m["seeds"]
    order = _dataset_order(m["datasets"], path)
    data, files = _dataset_files(m, order, runs)
    errors = CellErrors(runs, check_files, strict)
    planner = _Planner(m, runs, order, files, _model_starts(m, runs, errors), errors)
    for seed in seeds:
        for model_name, entry in m["models"].items():
            if seed == seeds[0]:
                planner.preparation_cells(model_name, entry)
            for ds_name in order:
                planner.dataset_cells(model_name, entry, ds_name, seed)
    cells = _save_evaluated_models(planner.cells)
    if only:
        cells = _select(cells, only, path)
    for name, spec in data.items():  # the files a concatenated dataset is built from
        for src in spec["sources"].values():
            for c in cells:
                if c.data == name:
                    errors.check_file(c.name, f"datasets.{name}.concat source", src)
    # a cell's errors are filed under its name; those of a finetune call no cell makes (the datasets that
    # only evaluate) count whatever `only` selects
    unselected = {c.name for c in planner.cells} - {c.name for c in cells}
    errors.raise_if_any(path, unselected)
    table_order = sorted(planner.table, key=planner.table.get)
    groups = {name: [d for d in table_order if planner.table[d][2] == name] for name in order}
    return Plan(matrix=path, description=m["description"], runs_dir=runs, seeds=seeds, models=list(m["models"]),
                datasets=table_order, cells=cells, data=data, groups={k: v for k, v in groups.items() if v})


def _dataset_files(m: dict[str, Any], order: list[str], runs: Path) -> tuple[dict[str, dict], dict[str, dict]]:
    """Each dataset's files (a concatenated one's are built under runs/_data/<name>/) and the datasets to build:
    (data: name -> {"params", "sources", "dir"}, files: name -> {"train_file", "eval_file", "eval_files"})."""
    path, datasets = m["path"], m["datasets"]
    data: dict[str, dict[str, Any]] = {}
    files: dict[str, dict[str, Any]] = {}
    for name in order:
        entry = datasets[name]
        if "concat" in entry:
            spec = dict(entry["concat"])
            source_name = spec.pop("source")
            source = files[source_name]
            params = {**CONCAT_DEFAULTS, **spec}
            if params.get("gold_position") == "random":  # concat's default: folders and manifests as before
                del params["gold_position"]
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
    return data, files


def _model_starts(m: dict[str, Any], runs: Path, errors: CellErrors) -> dict[str, tuple[str, list[str], int | None]]:
    """model key -> (the model fine-tuning starts from, the preparation cells it needs, its positions when
    known); checks the convert and pretrain fields against their verbs."""
    path = m["path"]
    starts: dict[str, tuple[str, list[str], int | None]] = {}
    for model_name, entry in m["models"].items():
        needs: list[str] = []
        start = entry["model"]
        positions = model_positions(start)
        if "convert" in entry:
            fn = resolve(VERBS["convert"])
            _check_fields(fn, [(f"{path}: models.{model_name}.convert", entry["convert"])], {"model"})
            name = f"_models/{model_name}/convert"
            bound = errors.check(name, fn, {"model": start, **entry["convert"]})
            start, needs = str(runs / name), [name]
            positions = resolved_config(fn, bound or {})["max_pos"]  # what conversion will make
        if "pretrain" in entry:
            fn = resolve(VERBS["pretrain"])
            recipe = dict(entry["pretrain"])
            where = entry.get("pretrain_recipe") or f"{path}: models.{model_name}.pretrain"
            _check_fields(fn, [(where, recipe)], set())
            name = f"_models/{model_name}/pretrain"
            errors.check(name, fn, {**recipe, "model": start})
            start, needs = str(runs / name / "model"), needs + [name]  # pretraining keeps the positions
        starts[model_name] = (start, needs, positions)
    return starts


def model_positions(model: str) -> int | None:
    """The positions of a model folder, read from its config.json alone (None: not a local folder, or a
    model without a position table); a plan reads no weights."""
    config = read_json_object(Path(model) / "config.json")
    if not config or not isinstance(config.get("max_position_embeddings"), int):
        return None
    from longctx.models import model_max_tokens

    return model_max_tokens(SimpleNamespace(max_position_embeddings=config["max_position_embeddings"],
                                            model_type=config.get("model_type"),
                                            pad_token_id=config.get("pad_token_id")))


def _finetune_checks(fields: dict[str, Any], positions: int | None) -> None:
    from longctx.finetune import check_lengths

    check_lengths(fields["max_length"], fields["doc_stride"], positions)


def _seq2seq_checks(fields: dict[str, Any], positions: int | None) -> None:
    from longctx.seq2seq import check_values

    check_values(fields)


def _convert_checks(fields: dict[str, Any], positions: int | None) -> None:
    from longctx.convert import check_sizes

    check_sizes(fields["max_pos"], fields["attention_window"])


def _pretrain_checks(fields: dict[str, Any], positions: int | None) -> None:
    from longctx.pretrain import check_values

    check_values(**fields)


# Each verb's cheap checks (the functions the verb itself runs before any work), by "module:function"; each
# gets all of a cell's fields (defaults included) and the positions of its model when known.
_VALUE_CHECKS: dict[str, Callable[[dict[str, Any], int | None], None]] = {
    "longctx.finetune:finetune": _finetune_checks,
    "longctx.finetune:evaluate": _finetune_checks,
    "longctx.qa.reference:finetune_reference": _finetune_checks,
    "longctx.seq2seq:finetune_seq2seq": _seq2seq_checks,
    "longctx.convert:convert": _convert_checks,
    "longctx.pretrain:pretrain": _pretrain_checks,
}
# Checks that also look at input files: run only where the files must be (`check_files`), not for kfp.
_READS_FILES = {"longctx.pretrain:pretrain"}
# Fields naming an input file or model folder of a cell (a hub name is neither; paths under the runs folder are
# made by other cells).
_INPUTS = ("model", "train_file", "eval_file", "data")


@dataclass
class CellErrors:
    """Every cell's binding, value and input-file errors, collected so that one plan lists them all."""

    runs: Path
    check_files: bool
    strict: bool  # False (dry runs): a value still holding ${VAR} is not checked as a file
    found: list[tuple[str, str]] = field(default_factory=list)  # (cell, message)

    def check(self, cell: str, fn: Callable, values: dict[str, Any], positions: int | None = None,
              runs: bool = True) -> dict[str, Any] | None:
        """`values` bound to `fn` (None when they do not bind), then, for a call that `runs` (not only bound to
        find field errors), checked with the verb's value checks and for its input files."""
        try:
            bound = bind(fn, {**values, "out": "-"}, source=cell)
        except LongctxError as e:
            self.found.append((cell, str(e).removeprefix(f"{cell}: ")))
            return None
        if not runs:
            return bound
        target = f"{fn.__module__}:{fn.__name__}"
        checks = _VALUE_CHECKS.get(target) if self.check_files or target not in _READS_FILES else None
        try:
            if checks:
                checks(resolved_config(fn, bound), positions)
        except LongctxError as e:
            self.found.append((cell, str(e)))
        for name in _INPUTS:
            value = bound.get(name)
            for f in value if isinstance(value, list) else [value]:
                self.check_file(cell, f"field '{name}'", f)
        return bound

    def check_file(self, cell: str, what: str, value: Any) -> None:
        """An input path must exist, unless a cell makes it (under the runs folder) or it is a hub name."""
        if not self.check_files or not isinstance(value, (str, Path)) or ("${" in str(value) and not self.strict):
            return
        path = Path(value).expanduser()
        if path.exists() or str(path.resolve()).startswith(str(self.runs.resolve())):
            return
        text = str(value)
        if text.endswith((".json", ".raw", ".txt")) or text.startswith(("/", "./", "../", "~")) or text.count("/") > 1:
            self.found.append((cell, f"{what}: {text} not found"))

    def raise_if_any(self, path: Path, unselected: set[str]) -> None:
        """One line naming every error (grouped by message, with its cells), each also logged on a line of its
        own; errors of `unselected` cells do not count."""
        found = [(c, e) for c, e in self.found if c not in unselected]
        if not found:
            return
        groups: dict[str, list[str]] = {}
        for cell, message in found:
            if cell not in groups.setdefault(message, []):
                groups[message].append(cell)
        for message, names in groups.items():
            log.error("%s: %s (%s)", path, message, ", ".join(names))
        parts = [f"{message} ({names[0]}{f' and {len(names) - 1} more cells' if len(names) > 1 else ''})"
                 for message, names in groups.items()]
        raise LongctxError(f"{path}: {len(found)} cell error(s), nothing started: {'; '.join(parts)}")


@dataclass
class _Planner:
    """Collects a matrix's cells in run order (dependencies first, each once) and the report's dataset order."""

    m: dict[str, Any]
    runs: Path
    order: list[str]
    files: dict[str, dict[str, Any]]
    starts: dict[str, tuple[str, list[str], int | None]]
    errors: CellErrors
    cells: list[Cell] = field(default_factory=list)
    names: set[str] = field(default_factory=set)
    # cell dataset -> (matrix order, language order, dataset entry): the report's column order
    table: dict[str, tuple[int, int, str]] = field(default_factory=dict)

    def add(self, cell: Cell) -> None:
        cell.kwargs = {k: v for k, v in cell.kwargs.items() if k not in SWEEP_SET}
        if cell.name not in self.names:
            self.names.add(cell.name)
            self.cells.append(cell)

    def preparation_cells(self, model_name: str, entry: dict[str, Any]) -> None:
        """`_models/<model>/convert` and `_models/<model>/pretrain`, once per model."""
        _, needs, _ = self.starts[model_name]
        if "convert" in entry:
            self.add(Cell(f"_models/{model_name}/convert", "convert", VERBS["convert"], model_name, None, None,
                          {"model": entry["model"], **entry["convert"]}))
        if "pretrain" in entry:
            converted = needs[0] if "convert" in entry else None
            self.add(Cell(f"_models/{model_name}/pretrain", "pretrain", VERBS["pretrain"], model_name, None, None,
                          {**entry["pretrain"], "model": str(self.runs / converted) if converted else entry["model"]},
                          needs=[converted] if converted else []))

    def dataset_cells(self, model_name: str, entry: dict[str, Any], ds_name: str, seed: int) -> None:
        """The fine-tuning cell of (model, dataset, seed) and its evaluation cells (eval_files languages,
        model_from datasets), every one bound against its verb."""
        path, ds = self.m["path"], self.m["datasets"][ds_name]
        if ds.get("models") and model_name not in ds["models"]:
            return
        start, model_needs, positions = self.starts[model_name]
        f = self.files[ds_name]
        model_fields = {k: v for k, v in entry.items() if k not in MODEL_KEYS and k != "pretrain_recipe"}
        model_base = entry.get("finetune", self.m["finetune"])
        ds_fields = {k: v for k, v in ds.items() if k not in DATASET_KEYS and k not in ("train_file", "eval_file")}
        values = {**model_base, **model_fields, **ds_fields, "model": start, "seed": seed,
                  "train_file": f["train_file"], "eval_file": f["eval_file"]}
        trainer = _verb(VERBS["finetune"], values)
        _check_fields(trainer, [(f"{path}: {'models.' + model_name + '.' if 'finetune' in entry else ''}finetune",
                                 model_base),
                                (f"{path}: models.{model_name}", model_fields),
                                (f"{path}: datasets.{ds_name}", ds_fields)], SWEEP_SET)
        data_name = ds_name if "concat" in ds else None
        train_cell = None
        # bound even without training data: a field error in the shared fields is reported once here
        self.errors.check(f"{model_name}/{ds_name}/seed-{seed}", trainer, values, positions,
                          runs=bool(f["train_file"]))
        if f["train_file"]:
            train_cell = f"{model_name}/{ds_name}/seed-{seed}"
            self.add(Cell(train_cell, "finetune", VERBS["finetune"], model_name, ds_name, seed, values,
                          needs=list(model_needs), data=data_name))
            self.table.setdefault(ds_name, (self.order.index(ds_name), 0, ds_name))
        src = ds.get("model_from")
        if src:
            source = self.m["datasets"][src]
            if source.get("models") and model_name not in source["models"]:
                raise LongctxError(f"{path}: datasets.{ds_name}: model_from {src}, which does not run "
                                   f"model {model_name} (add it to datasets.{src}.models)")
            train_cell = f"{model_name}/{src}/seed-{seed}"
        evals = dict(f["eval_files"])
        if not f["train_file"] and f["eval_file"]:
            evals[""] = f["eval_file"]
        for lang, eval_file in evals.items():
            self._evaluation_cell(model_name, ds_name, seed, lang, eval_file, values, train_cell,
                                  list(model_needs), data_name)

    def _evaluation_cell(self, model_name: str, ds_name: str, seed: int, lang: str, eval_file: str,
                         values: dict[str, Any], train_cell: str | None, model_needs: list[str],
                         data_name: str | None) -> None:
        path, ds = self.m["path"], self.m["datasets"][ds_name]
        ds_cell = f"{ds_name}-{lang}" if lang else ds_name
        if ds_cell in self.m["datasets"] and lang:
            raise LongctxError(f"{path}: datasets.{ds_name}.eval_files.{lang}: the cell name "
                               f"{ds_cell} is also a dataset name; rename one")
        eval_model = f"{self.runs / train_cell}/model" if train_cell else self.starts[model_name][0]  # same positions
        ev_values = {**values, "model": eval_model, "eval_file": eval_file, "train_file": None}
        if _verb(VERBS["finetune"], values) is resolve(VERBS["finetune"]):
            # extractive QA has its own evaluation verb, with the fields evaluation uses
            function = VERBS["evaluate"]
            known = parameters(resolve(function))
            kwargs = {k: v for k, v in ev_values.items() if k in known}
            kwargs["data"] = eval_file
        else:  # a task with its own verb (finetune's `task`) evaluates when given no train_file
            function = VERBS["finetune"]
            kwargs = {**{k: v for k, v in ev_values.items() if k != "save_model"}, "save_model": False}
        verb = _verb(function, kwargs)
        rescore = lang if ds.get("lang_normalisation") else None
        if rescore and "lang" in parameters(verb):
            kwargs["lang"], rescore = lang, None  # the verb scores with the language itself
        self.errors.check(f"{model_name}/{ds_cell}/seed-{seed}", verb, kwargs, self.starts[model_name][2])
        self.add(Cell(f"{model_name}/{ds_cell}/seed-{seed}", "evaluate", function, model_name, ds_cell, seed,
                      kwargs, needs=([train_cell] if train_cell else []) + model_needs, data=data_name,
                      lang=rescore or None))
        self.table.setdefault(ds_cell, (self.order.index(ds_name), len(self.table), ds_name))


def _save_evaluated_models(cells: list[Cell]) -> list[Cell]:
    """A trained model that other cells evaluate must be saved (`save_model` forced on for it only)."""
    by_name = {c.name: c for c in cells}
    for c in cells:
        for need in c.needs:
            if by_name[need].kind == "finetune":
                by_name[need].kwargs["save_model"] = True
    return cells


def _select(cells: list[Cell], only: list[str], path: Path) -> list[Cell]:
    """The cells matching an `only` pattern and the cells they need (marked `dependency`)."""
    by_name = {c.name: c for c in cells}
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
    return cells
