"""`longctx report RUNS_DIR`: thesis-style tables (Markdown, org, LaTeX) and plots from a folder of runs.

Every `metrics.json` under RUNS_DIR with evaluation figures (`eval`: EM as `exact_match` (SQuAD 1.1) or
`exact` (SQuAD 2.0), and `f1`) is one run. Runs are grouped by (model, dataset). Per group: mean and
sample standard deviation (n - 1 in the denominator; none for n = 1) over the runs, and n. The numbers
are the runs' own metrics.json figures.

Who a run's model is comes from metadata, never from a folder's name: a sweep cell's cell.json names the
matrix's model; else a `<model>/<dataset>/seed-<N>` layout names it by its full relative path; else the
model the run recorded (metrics.json / run.json): its longctx lineage (source -> conversion -> MLM
pretraining, from the model's config.json `longctx` entry) when the folder is at hand, else its full path
or hub name. Two different model folders never share a row: a shared label gets the folder appended.

A metrics.json or cell.json that cannot be read, or whose figures are not numbers in [0, 100] (or whose
seed is not an integer), stops the report with one line naming the file and the field (`skip_invalid`
leaves such runs out and names them in the notes instead): a bad file is never averaged.

Folders whose name starts with '.' or '_' (sweep internals, `_models`, `_data`), `*.incomplete-*`
folders (moved aside by the sweep) and cells whose cell.json is not "done" are left out of the tables.
Sweep cells whose settings differ from the matrix now (`done (settings changed)` in `sweep --dry-run`)
stay in the tables, marked with a dagger and listed in a footnote.
MLM pretraining curves come from TensorBoard event files anywhere under RUNS_DIR (`_models` included),
with the source model's level from the pretraining's metrics.json (`before.source`).

The output folder may hold other files: report replaces only the files it wrote itself (listed with their
checksums in report-manifest.json) and refuses, without `force`, to replace anything else.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
import statistics
import textwrap
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from longctx.common import LongctxError, atomic_path, log, read_json, read_json_object, write_json, write_text

_SEED = re.compile(r"^seed-(-?\d+)$")
EVAL_LOSS_TAGS = ("eval/loss", "eval_loss", "eval/mlm_loss")
# Every file report may write (or remove when it no longer applies) in its output folder, and its manifest.
OUTPUTS = ("report.md", "report.org", "report.tex", "report.json", "em.png", "f1.png", "mlm_loss.png")
MANIFEST = "report-manifest.json"
CHANGED = "†"
METRICS = {"em": "EM", "f1": "F1"}
# The key of models and datasets named by a sweep cell or a <model>/<dataset>/seed-<N> folder: one namespace,
# since the sweep lays its cells out that way.
NAMED = "named in the runs folder"


def _load(path: Path, what: str) -> dict[str, Any]:
    value = read_json(path, what)
    if not isinstance(value, dict):
        raise LongctxError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _percent(value: Any, path: Path, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 <= value <= 100:
        raise LongctxError(f"{path}: {field} is {_short(value)}: expected a number from 0 to 100 (percent)")
    return float(value)


def _seed_value(value: Any, path: Path, field: str) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise LongctxError(f"{path}: {field} is {_short(value)}: expected an integer seed")


def _text(value: Any, path: Path, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise LongctxError(f"{path}: {field} is {_short(value)}: expected a non-empty string")
    return value


def _skipped(rel: Path) -> bool:
    return any(part.startswith((".", "_")) or ".incomplete-" in part or part == "checkpoints" for part in rel.parts)


def model_lineage(config: dict[str, Any]) -> str | None:
    """'roberta-base → Longformer 4096 → MLM 3000 steps (wikitext-103)' from a model config.json's `longctx`
    entry (written by convert and pretrain, kept by fine-tuning); None for a model longctx did not convert."""
    entry = config.get("longctx")
    if not isinstance(entry, dict) or not entry.get("converted_from"):
        return None
    from longctx.models import model_max_tokens

    parts = [str(entry["converted_from"])]
    try:
        parts.append(f"Longformer {model_max_tokens(SimpleNamespace(**config))}")
    except (AttributeError, TypeError):
        parts.append("Longformer")
    pretrained = entry.get("pretrained")
    if isinstance(pretrained, dict):
        data = f" ({pretrained['data']})" if pretrained.get("data") else ""
        parts.append(f"MLM {pretrained.get('steps', '?')} steps{data}")
    return " → ".join(parts)


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a recorded name that is no path here (too long, a NUL byte)
        return False


def _recorded_model(model: str, folder: Path) -> dict[str, Any]:
    """What a run's recorded model is: its folder (resolved) and lineage when at hand. A fine-tuned run's own
    saved model/ carries the lineage of the model it started from."""
    info: dict[str, Any] = {"recorded": model, "folder": None, "lineage": None}
    local = Path(model).expanduser()
    if _is_file(local / "config.json"):
        info["folder"] = str(local.resolve())
        config = read_json_object(local / "config.json")
    else:
        config = read_json_object(folder / "model" / "config.json")
    if config is not None:
        info["lineage"] = model_lineage(config)
    return info


def _run(folder: Path, rel: Path) -> tuple[dict[str, Any] | None, str | None]:
    """One QA run's record from its folder (None for a run without EM/F1), or a note on why it is left out.
    Raises LongctxError naming the file and the field for anything malformed."""
    path = folder / "metrics.json"
    metrics = _load(path, "metrics")
    cell_path = folder / "cell.json"
    cell = _load(cell_path, "cell file") if cell_path.exists() else None
    if cell is not None and cell.get("status") != "done":
        return None, f"{rel}: cell not finished (cell.json status {_short(cell.get('status'))}): left out"
    ev = metrics.get("eval")
    if ev is None:
        return None, None  # training-only or pretraining runs: no QA figures
    if not isinstance(ev, dict):
        raise LongctxError(f"{path}: eval is {_short(ev)}: expected an object of evaluation figures")
    em_key = "exact_match" if "exact_match" in ev else "exact"
    if "f1" not in ev and em_key not in ev:
        return None, None  # other evaluation figures (e.g. a pretraining's): not a QA run
    for field in ("f1", em_key):
        if field not in ev:
            raise LongctxError(f"{path}: eval.{field} is missing (eval has {', '.join(sorted(ev)) or 'no figures'})")
    em, f1 = _percent(ev[em_key], path, f"eval.{em_key}"), _percent(ev["f1"], path, "eval.f1")
    run_path = folder / "run.json"
    run_info = _load(run_path, "run metadata") if run_path.exists() else {}
    config = run_info.get("config") if isinstance(run_info.get("config"), dict) else {}
    recorded = metrics.get("model", config.get("model"))
    if recorded is not None:
        recorded = _text(recorded, path, "model")
    info = _recorded_model(recorded, folder) if recorded else {"recorded": None, "folder": None, "lineage": None}
    # another training pipeline than longctx's (the hf-reference peer check): never merged with longctx's runs
    pipeline = metrics.get("pipeline", config.get("pipeline"))
    info["pipeline"] = _text(pipeline, path, "pipeline") if pipeline not in (None, "longctx") else None
    seed = None
    if cell is not None:
        model, model_key = _text(cell.get("model"), cell_path, "model"), NAMED
        dataset, dataset_key = _text(cell.get("dataset"), cell_path, "dataset"), NAMED
        seed = _seed_value(cell.get("seed"), cell_path, "seed")
        via = "sweep"
    elif len(rel.parts) >= 3 and _SEED.match(rel.parts[-1]):
        model, dataset = "/".join(rel.parts[:-2]), rel.parts[-2]
        model_key = dataset_key = NAMED
        seed = int(_SEED.match(rel.parts[-1]).group(1))
        via = "folder layout"
    else:
        model = info["lineage"] or recorded or f"{rel} (model not recorded)"
        model_key = info["folder"] or recorded or str(rel)
        if info["pipeline"]:
            model, model_key = f"{model} [{info['pipeline']}]", f"{model_key}#{info['pipeline']}"
        eval_file = metrics.get("eval_file", config.get("eval_file") or config.get("data"))
        if eval_file:
            eval_file = _text(eval_file, path, "eval_file")
            dataset = Path(eval_file).stem
            dataset_key = str(Path(eval_file).resolve()) if _is_file(Path(eval_file)) else eval_file
        else:
            dataset, dataset_key = str(rel), str(rel)
        via = "run metadata"
    if seed is None:
        seed = _seed_value(metrics.get("seed"), path, "seed")
    if seed is None:
        seed = _seed_value(run_info.get("seed"), run_path, "seed")
    return {"model": model, "dataset": dataset, "seed": seed, "em": em, "f1": f1, "path": str(rel),
            "cell": str(cell.get("cell") or rel) if cell is not None else None, "named_by": via,
            "model_key": model_key, "dataset_key": dataset_key, "model_info": info}, None


def _disambiguate(runs: list[dict[str, Any]], field: str) -> list[str]:
    """A label shared by different models (or data files) gets each one's own key appended: never one row."""
    keys: dict[str, set[str]] = defaultdict(set)
    for r in runs:
        keys[r[field]].add(r[f"{field}_key"])
    shared = sorted(label for label, k in keys.items() if len(k) > 1)
    for r in runs:
        if r[field] in shared:
            r[field] = f"{r[field]} [{r[f'{field}_key']}]"
    return [f"{len(keys[label])} different {field}s are named {label!r}: each row names its own ({field} [folder])"
            for label in shared]


def collect(runs_dir: str | Path, exclude: Path | None = None,
            skip_invalid: bool = False) -> tuple[list[dict[str, Any]], list[str]]:
    """One record per finished QA run under `runs_dir`: model, dataset, seed, em, f1, path; plus notes.

    A malformed file raises LongctxError, or with `skip_invalid` leaves its run out with a note."""
    root = Path(runs_dir)
    runs: list[dict[str, Any]] = []
    notes: list[str] = []
    for path in sorted(root.rglob("metrics.json")):
        folder = path.parent
        rel = folder.relative_to(root)
        if _skipped(rel) or (exclude is not None and folder.resolve() == exclude.resolve()):
            continue
        try:
            record, note = _run(folder, rel)
        except LongctxError as e:
            if not skip_invalid:
                raise
            record, note = None, f"{e}: left out"
            log.warning("%s", note)
        if note:
            notes.append(note)
        if record is not None:
            runs.append(record)
    notes += _disambiguate(runs, "model") + _disambiguate(runs, "dataset")
    seen: dict[tuple, str] = {}
    for r in runs:
        key = (r["model"], r["dataset"], r["seed"])
        if r["seed"] is not None and key in seen:
            notes.append(f"{r['path']} repeats seed {r['seed']} of {seen[key]} ({r['model']}, {r['dataset']})")
        seen.setdefault(key, r["path"])
    return runs, notes


def sweep_order(path: Path) -> tuple[dict[str, Any], str | None]:
    """sweep.json's matrix, seeds, and the table order (models, datasets, groups), keeping only well-formed
    entries: it orders the tables and finds the matrix, it never changes a number; plus a note on what was
    ignored."""
    if not path.exists():
        return {}, None
    raw = read_json_object(path)
    if raw is None:
        return {}, f"{path}: not a readable JSON object: tables in alphabetical order"

    def names(value: Any) -> bool:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)

    info = {k: raw[k] for k in ("models", "datasets") if names(raw.get(k))}
    groups = raw.get("groups")
    if isinstance(groups, dict):
        info["groups"] = {k: v for k, v in groups.items() if names(v)}
    info.update({k: raw[k] for k in ("matrix", "seeds") if k in raw})
    ignored = [k for k in ("models", "datasets", "groups") if k in raw and k not in info]
    return info, f"{path}: {', '.join(ignored)} malformed: ignored" if ignored else None


def changed_settings(root: Path, sweep_info: dict[str, Any], runs: list[dict[str, Any]]) -> tuple[set[str], str | None]:
    """Sweep cells (names) that `longctx sweep --dry-run` would show as 'done (settings changed)': the matrix
    named in sweep.json is planned again and each cell compared by the sweep's own rule; plus a note when the
    comparison could not be made."""
    cells = {r["cell"] for r in runs if r["cell"]}
    if not cells:
        return set(), None
    matrix, seeds = sweep_info.get("matrix"), sweep_info.get("seeds")
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        seeds = None  # the matrix's own
    if not matrix or not isinstance(matrix, str):
        return set(), ("no sweep.json naming the matrix: sweep cells were not compared with the matrix's current "
                        "settings")
    from longctx.sweep.plan import plan
    from longctx.sweep.registry import Registry
    from longctx.sweep.state import cell_status

    try:
        p = plan(matrix, runs_dir=root, seeds=seeds or None, strict=False)
    except LongctxError as e:
        return set(), f"cells were not compared with the matrix's current settings: {e}"
    registry = Registry(p.registry) if p.registry.exists() else None
    try:
        return {c.name for c in p.cells
                if c.name in cells and cell_status(p, c, registry) == "done (settings changed)"}, None
    finally:
        if registry is not None:
            registry.close()


def _stats(values: list[float]) -> dict[str, Any]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values), "values": list(values)}


def _ordered(names: set[str], preferred: list[str]) -> list[str]:
    first = [n for n in preferred if n in names]
    return first + sorted(names - set(first))


def summarize(runs: list[dict[str, Any]], models: list[str] | None = None,
              datasets: list[str] | None = None) -> list[dict[str, Any]]:
    """Rows (model, dataset, em {mean, std, n, values}, f1 {...}, n, seeds, runs, changed) in matrix order
    where known; `changed`: the runs done with settings the matrix no longer has."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in runs:
        groups[(r["model"], r["dataset"])].append(r)
    model_order = _ordered({m for m, _ in groups}, models or [])
    dataset_order = _ordered({d for _, d in groups}, datasets or [])
    rows = []
    for model in model_order:
        for dataset in dataset_order:
            group = groups.get((model, dataset))
            if not group:
                continue
            group = sorted(group, key=lambda r: (r["seed"] is None, str(r["seed"])))
            rows.append({"model": model, "dataset": dataset, "em": _stats([r["em"] for r in group]),
                         "f1": _stats([r["f1"] for r in group]), "n": len(group),
                         "seeds": [r["seed"] for r in group], "runs": [r["path"] for r in group],
                         "changed": [r["path"] for r in group if r.get("settings_changed")]})
    return rows


def fmt(stat: dict[str, Any], pm: str = "±") -> str:
    """'81.23 ± 0.45' (two decimals); the std is left out for a single run."""
    if stat["std"] is None:
        return f"{stat['mean']:.2f}"
    return f"{stat['mean']:.2f} {pm} {stat['std']:.2f}"


def _seeds(row: dict) -> str:
    return ", ".join(str(s) for s in row["seeds"] if s is not None)


def _pivot(rows: list[dict]) -> tuple[list[str], list[str], dict[tuple[str, str], dict]]:
    models = list(dict.fromkeys(r["model"] for r in rows))
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    return models, datasets, {(r["model"], r["dataset"]): r for r in rows}


def _f1(cells: dict[tuple[str, str], dict], model: str, dataset: str) -> dict | None:
    row = cells.get((model, dataset))
    return None if row is None else {**row["f1"], "changed": bool(row["changed"])}


def pivots(rows: list[dict], runs: list[dict], groups: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
    """F1 tables with models as rows: one over the single datasets, and one per multi-language dataset
    (`groups`, from the sweep: xquad -> xquad-ar, xquad-de, ...) with its languages and their average.

    The average is taken per seed over the languages (seeds that have every language), then mean ± sample
    std over those seeds. A figure with runs of changed settings in it carries `changed`."""
    models, datasets, cells = _pivot(rows)
    groups = {k: v for k, v in (groups or {}).items() if isinstance(v, list)}
    multi = {name: [m for m in members if m in datasets] for name, members in groups.items() if members != [name]}
    multi = {name: members for name, members in multi.items() if members}
    in_multi = {m for members in multi.values() for m in members}
    tables = []
    singles = [d for d in datasets if d not in in_multi]
    if singles:
        tables.append({"title": "F1 by model and dataset", "columns": singles,
                       "rows": [(m, [_f1(cells, m, d) for d in singles])
                                for m in models if any((m, d) in cells for d in singles)]})
    f1 = {(r["model"], r["dataset"], r["seed"]): r for r in runs}
    for name, members in multi.items():
        table_rows = []
        for m in models:
            if not any((m, d) in cells for d in members):
                continue
            seeds = [s for s in dict.fromkeys(r["seed"] for r in runs if r["model"] == m and r["dataset"] in members)
                     if s is not None and all((m, d, s) in f1 for d in members)]
            avg = None
            if seeds:
                avg = _stats([statistics.fmean(f1[(m, d, s)]["f1"] for d in members) for s in seeds])
                avg["changed"] = any(f1[(m, d, s)].get("settings_changed") for d in members for s in seeds)
            table_rows.append((m, [_f1(cells, m, d) for d in members] + [avg]))
        tables.append({"title": f"{name}: F1 by language (avg: per seed over all languages, then over seeds)",
                       "columns": [d[len(name) + 1:] if d.startswith(name + "-") else d for d in members] + ["avg"],
                       "rows": table_rows})
    return tables


NOTE = ("EM and F1 in percent: mean ± sample standard deviation over seeds (n − 1 in the denominator; "
        "no deviation for a single run); n = number of runs (seeds).")


def changed_footnote(rows: list[dict]) -> str | None:
    changed = [path for r in rows for path in r["changed"]]
    if not changed:
        return None
    return (f"{CHANGED} Settings changed: {len(changed)} run(s) were done with settings that differ from the "
            f"matrix now (`longctx sweep --dry-run` shows them as `done (settings changed)`); they are kept in "
            f"the tables and marked {CHANGED}: {', '.join(changed)}. Move a cell's folder aside and rerun the "
            f"sweep to redo it with the current settings.")


def model_provenance(runs: list[dict], root: Path) -> list[tuple[str, str]]:
    """(row label, what the runs recorded: model path or name, and its longctx lineage) per model. A model folder
    inside the runs folder is shown under the runs folder as the user named it, so that a report kept in a
    repository names no machine's absolute paths."""
    described: dict[str, dict[str, None]] = defaultdict(dict)
    for r in runs:
        info = r["model_info"]
        if info["recorded"]:
            text = info["recorded"]
            if info["folder"]:
                try:
                    text = str(root / Path(info["folder"]).relative_to(root.resolve()))
                except ValueError:  # outside the runs folder
                    text = info["folder"]
            if info["lineage"] and info["lineage"] not in r["model"]:
                text += f" ({info['lineage']})"
            if info.get("pipeline") and info["pipeline"] not in r["model"]:
                text += f" [{info['pipeline']}: the plain HF Trainer with run_qa.py's defaults]"
            if text not in r["model"]:  # nothing to add to the row's own label
                described[r["model"]][text] = None
    return [(label, "; ".join(texts)) for label, texts in described.items() if texts]


def _mark(text: str, changed: bool, marker: str = f" {CHANGED}") -> str:
    return text + marker if changed else text


def _cell(stat: dict | None, pm: str = "±", missing: str = "–", marker: str = f" {CHANGED}") -> str:
    return _mark(fmt(stat, pm), bool(stat.get("changed")), marker) if stat else missing


def markdown(rows: list[dict], tables: list[dict], title: str, notes: list[str],
             plots: dict[str, tuple[str, str | None]], models: list[tuple[str, str]]) -> str:
    lines = [f"# {title}", "", NOTE, "", "| model | dataset | EM | F1 | n | seeds |", "|---|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {_mark(r['dataset'], bool(r['changed']))} | {fmt(r['em'])} | "
                     f"{fmt(r['f1'])} | {r['n']} | {_seeds(r)} |")
    for t in tables:
        lines += ["", f"## {t['title']}", "", "| model | " + " | ".join(t["columns"]) + " |",
                  "|---|" + "---:|" * len(t["columns"])]
        lines += [f"| {m} | " + " | ".join(_cell(c) for c in cs) + " |" for m, cs in t["rows"]]
    footnote = changed_footnote(rows)
    if footnote:
        lines += ["", footnote]
    if models:
        lines += ["", "## Models", ""] + [f"- {label}: {text}" for label, text in models]
    lines += ["", "## Plots", ""]
    for name, (caption, file) in plots.items():
        lines.append(f"![{caption}]({file})" if file else f"- {caption}: none ({name})")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def org(rows: list[dict], tables: list[dict], title: str, notes: list[str],
        plots: dict[str, tuple[str, str | None]], models: list[tuple[str, str]]) -> str:
    lines = [f"#+title: {title}", "", NOTE, "", "| model | dataset | EM | F1 | n | seeds |", "|-"]
    for r in rows:
        lines.append(f"| {r['model']} | {_mark(r['dataset'], bool(r['changed']))} | {fmt(r['em'])} | "
                     f"{fmt(r['f1'])} | {r['n']} | {_seeds(r)} |")
    for t in tables:
        lines += ["", f"* {t['title']}", "", "| model | " + " | ".join(t["columns"]) + " |", "|-"]
        lines += [f"| {m} | " + " | ".join(_cell(c) for c in cs) + " |" for m, cs in t["rows"]]
    footnote = changed_footnote(rows)
    if footnote:
        lines += ["", footnote]
    if models:
        lines += ["", "* Models", ""] + [f"- {label}: {text}" for label, text in models]
    lines += ["", "* Plots", ""]
    for name, (caption, file) in plots.items():
        lines += [f"#+caption: {caption}", f"[[file:{file}]]", ""] if file else [f"- {caption}: none ({name})"]
    if notes:
        lines += ["", "* Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "→": r"$\to$", "†": r"$^\dagger$"}


def tex_escape(text: str) -> str:
    return "".join(_TEX.get(c, c) for c in str(text))


def latex(rows: list[dict], tables: list[dict], title: str) -> str:
    """booktabs tables: EM/F1/n per model x dataset, then the F1 tables of `pivots`."""
    pm, dagger = r"$\pm$", r"$^\dagger$"
    footnote = changed_footnote(rows)
    footnote = f" {tex_escape(footnote)}" if footnote else ""
    out = ["% Generated by `longctx report`; needs \\usepackage{booktabs}.",
           r"\begin{table}[ht]", r"\centering", r"\begin{tabular}{llrrr}", r"\toprule",
           r"Model & Dataset & EM & F1 & $n$ \\", r"\midrule"]
    for r in rows:
        out.append(f"{tex_escape(r['model'])} & {_mark(tex_escape(r['dataset']), bool(r['changed']), dagger)} & "
                   f"{fmt(r['em'], pm)} & {fmt(r['f1'], pm)} & {r['n']} \\\\")
    out += [r"\bottomrule", r"\end{tabular}",
            f"\\caption{{{tex_escape(title)}: EM and F1 (\\%), mean {pm} sample standard deviation over seeds "
            f"($n-1$ denominator); $n$ runs.{footnote}}}", r"\end{table}"]
    for t in tables:
        out += ["", r"\begin{table}[ht]", r"\centering", r"\begin{tabular}{l" + "r" * len(t["columns"]) + "}",
                r"\toprule", "Model & " + " & ".join(tex_escape(c) for c in t["columns"]) + r" \\", r"\midrule"]
        out += [tex_escape(m) + " & " + " & ".join(_cell(c, pm, "--", dagger) for c in cs) + r" \\"
                for m, cs in t["rows"]]
        out += [r"\bottomrule", r"\end{tabular}", f"\\caption{{{tex_escape(title)}: {tex_escape(t['title'])} (\\%).}}",
                r"\end{table}"]
    return "\n".join(out) + "\n"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    return buffer.getvalue()


def _n_label(ns: list[int]) -> str:
    return f"n = {min(ns)}" if min(ns) == max(ns) else f"n = {min(ns)}–{max(ns)}"


def score_figure(rows: list[dict], metric: str, per_panel: int = 14):
    """`metric` (em or f1) per model and dataset: mean ± sample std (a marker with an error bar) and, beside
    it, each run's own value as a dot, so single seeds and the spread are visible; each model's n (runs per
    dataset) in the legend. Many datasets are wrapped into panels of `per_panel`. None without rows."""
    if not rows:
        return None
    from matplotlib.lines import Line2D

    plt = _pyplot()
    models, datasets, cells = _pivot(rows)
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(models)}
    panels = [datasets[i:i + per_panel] for i in range(0, len(datasets), per_panel)]
    widest = max(sum(1 for d in panel for m in models if (m, d) in cells) for panel in panels)
    # the plotting area grows with the points per panel; the legend (about 3.5 in) sits to its right
    width = 3.5 + max(4.0, min(22.0, 1.0 + 0.35 * widest + 0.5 * max(len(p) for p in panels)))
    fig, axes = plt.subplots(len(panels), 1, figsize=(width, 3.8 * len(panels)), squeeze=False,
                             layout="constrained")
    values = [v for r in rows for v in r[metric]["values"]] + \
             [r[metric]["mean"] + sign * (r[metric]["std"] or 0) for r in rows for sign in (-1, 1)]
    pad = max(1.0, 0.08 * (max(values) - min(values)))
    limits = (max(0.0, min(values) - pad), min(100.0 + pad / 2, max(values) + pad))
    slot = 0.8 / max(sum(1 for m in models if (m, d) in cells) for d in datasets)
    for ax, panel in zip(axes[:, 0], panels):
        for j, d in enumerate(panel):
            present = [m for m in models if (m, d) in cells]
            for i, m in enumerate(present):
                row, x = cells[(m, d)], j + (i - (len(present) - 1) / 2) * slot
                stat = row[metric]
                ax.errorbar(x - 0.2 * slot, stat["mean"], yerr=stat["std"] or None, fmt="o", markersize=6,
                            capsize=3, color=colours[m])
                n = len(stat["values"])
                spread = [x + 0.2 * slot + (k / (n - 1) - 0.5) * 0.2 * slot if n > 1 else x + 0.2 * slot
                          for k in range(n)]
                # "_seeds": a label matplotlib keeps out of the legend, and that finds these points again
                ax.scatter(spread, stat["values"], s=16, color=colours[m], alpha=0.6, edgecolors="none",
                           label="_seeds", zorder=3)
                if row["changed"]:
                    ax.annotate(CHANGED, (x, stat["mean"] + (stat["std"] or 0)), textcoords="offset points",
                                xytext=(0, 4), ha="center", fontsize=9)
        ax.set_xticks(range(len(panel)))
        rotate = len(panel) > 5 or sum(len(d) for d in panel) > 8 * len(panel)
        ax.set_xticklabels(panel, rotation=35 if rotate else 0, ha="right" if rotate else "center")
        ax.set_xlim(-0.6, len(panels[0]) - 0.4)  # the same slot widths in every panel
        ax.set_ylim(*limits)
        ax.set_ylabel(f"{METRICS[metric]} (%)")
        ax.grid(axis="y", alpha=0.3)
    handles = [Line2D([], [], color=colours[m], marker="o", linestyle="none") for m in models]
    # long labels (a lineage with its folder) are wrapped so the plot keeps its width
    labels = [textwrap.fill(f"{m} ({_n_label([r['n'] for r in rows if r['model'] == m])})", 48,
                            subsequent_indent="  ") for m in models]
    handles += [Line2D([], [], color="grey", marker="o", linestyle="-", markersize=6),
                Line2D([], [], color="grey", marker="o", linestyle="none", markersize=4, alpha=0.6)]
    labels += ["mean ± sample std", "one run (seed)"]
    if any(r["changed"] for r in rows):
        handles.append(Line2D([], [], linestyle="none"))
        labels.append(f"{CHANGED} settings changed since")
    axes[0, 0].set_title(f"{METRICS[metric]} per model and dataset")
    fig.legend(handles, labels, fontsize="small", loc="outside right upper")
    return fig


def loss_curves(runs_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Eval-loss curves {run folder: [(step, loss)]} from TensorBoard event files (via EventAccumulator)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folders = sorted({p.parent for p in runs_dir.rglob("events.out.tfevents.*")})
    curves: dict[str, list[tuple[int, float]]] = {}
    for folder in folders:
        rel = folder.relative_to(runs_dir)
        if any(".incomplete-" in part or part == "checkpoints" for part in rel.parts):
            continue
        acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        try:
            acc.Reload()
        except Exception as e:  # a truncated event file (killed writer) must not stop the report
            log.warning("%s: unreadable TensorBoard events (%s)", folder, e)
            continue
        tags = acc.Tags().get("scalars", [])
        tag = next((t for t in EVAL_LOSS_TAGS if t in tags), None)
        if tag is None:
            continue
        points: dict[int, float] = {}
        for event in acc.Scalars(tag):  # a resumed run repeats steps: the latest value wins
            if math.isfinite(event.value):
                points[event.step] = event.value
        if points:
            run = rel.parent if rel.name == "tensorboard" else rel
            curves[str(run)] = sorted(points.items())
    return curves


def source_levels(runs_dir: Path, curves: dict[str, list]) -> dict[str, dict[str, Any]]:
    """{run: {model, loss, block_size}}: the source model's MLM eval loss on the same masked text, from the
    pretraining's metrics.json (`before.source`, at the source's own length), for each curve that has one."""
    levels = {}
    for run in curves:
        source = ((read_json_object(runs_dir / run / "metrics.json") or {}).get("before") or {}).get("source")
        loss = source.get("loss") if isinstance(source, dict) else None
        if isinstance(loss, (int, float)) and not isinstance(loss, bool) and math.isfinite(loss):
            levels[run] = {"model": str(source.get("model")), "loss": float(loss),
                           "block_size": source.get("block_size")}
    return levels


def loss_figure(curves: dict[str, list[tuple[int, float]]], levels: dict[str, dict[str, Any]]):
    """MLM eval loss against the (integer) optimizer step, one line per pretraining run, and a dashed line in
    the same colour at its source model's loss. None without curves."""
    if not curves:
        return None
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for i, (name, points) in enumerate(curves.items()):
        colour = plt.get_cmap("tab10")(i % 10)
        steps, losses = zip(*points)
        m = re.match(r"^_models/([^/]+)/pretrain$", name)
        # matplotlib hides legend labels that start with "_"
        label = f"{m.group(1)} (pretraining)" if m else name.lstrip("_")
        ax.plot(steps, losses, marker="o", markersize=3, color=colour, label=label)
        level = levels.get(name)
        if level:
            length = f", {level['block_size']} tokens" if level.get("block_size") else ""
            ax.axhline(level["loss"], color=colour, linestyle="--", linewidth=1,
                       label=f"{level['model']} (source{length})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("MLM eval loss (nats per masked token)")
    ax.set_title("Masked-LM evaluation loss during pretraining")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def own_files(out_dir: Path) -> set[str]:
    """The files of OUTPUTS in `out_dir` that an earlier report wrote (report-manifest.json) and that nobody
    changed since: the only ones a report replaces or removes unasked."""
    manifest = read_json_object(out_dir / MANIFEST) or {}
    listed = manifest.get("files") if manifest.get("written_by") == "longctx report" else None
    if not isinstance(listed, dict):
        return set()
    return {name for name, digest in listed.items()
            if name in OUTPUTS and (out_dir / name).is_file() and _sha256(out_dir / name) == digest}


def check_out_dir(out_dir: Path, force: bool) -> set[str]:
    """Refuse (without `force`) an output folder where report would replace a file it did not write; returns
    the files report wrote there before (which it may remove when they no longer apply)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise LongctxError(f"{out_dir}: exists and is not a folder")
    existing = next(p for p in (out_dir, *out_dir.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise LongctxError(f"{out_dir}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise LongctxError(f"{out_dir}: {existing} is not writable")
    if not out_dir.is_dir():
        return set()
    folders = [n for n in (*OUTPUTS, MANIFEST) if (out_dir / n).is_dir()]
    if folders:
        raise LongctxError(f"{out_dir}: {', '.join(folders)} is a folder where the report writes a file: "
                           f"choose another --out")
    own = own_files(out_dir)
    manifest = read_json_object(out_dir / MANIFEST)
    theirs = [n for n in OUTPUTS if (out_dir / n).exists() and n not in own]
    if (out_dir / MANIFEST).exists() and (manifest or {}).get("written_by") != "longctx report":
        theirs.append(MANIFEST)
    if theirs and not force:
        raise LongctxError(f"{out_dir}: {', '.join(theirs)} not written by longctx report (or edited since): "
                           f"pass --force to replace them, or choose another --out")
    return own


def report(runs_dir: str, /, *, out: str | None = None, title: str | None = None, force: bool = False,
           skip_invalid: bool = False) -> dict[str, Any]:
    """Write Markdown, org and LaTeX tables (EM/F1 mean ± std over seeds per model × dataset) and PNG plots.

    Args:
        runs_dir: folder of runs (e.g. a `longctx sweep` runs_dir); every metrics.json with EM/F1 counts.
        out: folder for report.md, report.org, report.tex, report.json, em.png, f1.png, mlm_loss.png and
            report-manifest.json (default: RUNS_DIR/report). Other files in it are left alone.
        title: table title (default: "Results: RUNS_DIR").
        force: replace report files in `out` that longctx report did not write, or that were edited since
            (files with other names are never touched).
        skip_invalid: leave out runs whose metrics.json, cell.json or run.json is malformed, each named in
            the report's notes (default: stop with an error naming the file and the field).

    Example:
        longctx report runs/thesis --out runs/thesis/report
    """
    root = Path(runs_dir)
    if not root.is_dir():
        raise LongctxError(f"{root}: {'not a folder' if root.exists() else 'runs folder not found'}")
    out_dir = Path(out) if out else root / "report"
    own = check_out_dir(out_dir, force)
    title = title or f"Results: {root}"
    sweep_info, sweep_note = sweep_order(root / "sweep.json")
    runs, notes = collect(root, exclude=out_dir, skip_invalid=skip_invalid)
    changed, why = changed_settings(root, sweep_info, runs)
    notes += [n for n in (sweep_note, why) if n]
    for r in runs:
        r["settings_changed"] = r["cell"] in changed
    rows = summarize(runs, sweep_info.get("models"), sweep_info.get("datasets"))
    if not rows:
        notes.append(f"no metrics.json with EM/F1 under {root}")

    images: dict[str, bytes | None] = {}
    plots: dict[str, tuple[str, str | None]] = {}
    for metric, name in METRICS.items():
        fig = score_figure(rows, metric)
        images[f"{metric}.png"] = _png(fig) if fig is not None else None
        plots[metric] = (f"{name} per model and dataset: mean ± sample std over seeds and each seed",
                         f"{metric}.png" if fig is not None else None)
    curves = loss_curves(root)
    levels = source_levels(root, curves)
    fig = loss_figure(curves, levels)
    images["mlm_loss.png"] = _png(fig) if fig is not None else None
    plots["mlm_loss"] = ("MLM evaluation loss during pretraining",
                         "mlm_loss.png" if fig is not None else None)
    if not curves:
        notes.append("no MLM eval-loss curves: no TensorBoard event files with eval/loss under the runs folder "
                     "(they come from `longctx pretrain` runs); mlm_loss.png not written")
    tables = pivots(rows, runs, sweep_info.get("groups"))
    models = model_provenance(runs, root)
    texts = {"report.md": markdown(rows, tables, title, notes, plots, models),
             "report.org": org(rows, tables, title, notes, plots, models),
             "report.tex": latex(rows, tables, title)}
    result = {"runs_dir": str(root), "rows": rows, "tables": tables, "runs": runs, "notes": notes,
              "curves": {k: [list(p) for p in v] for k, v in curves.items()}, "source_levels": levels,
              "files": {**{name.split(".")[1]: str(out_dir / name) for name in texts},
                        **{k: str(out_dir / v[1]) for k, v in plots.items() if v[1]},
                        "json": str(out_dir / "report.json")}}

    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        write_text(out_dir / name, text)
    for name, data in images.items():
        if data is not None:
            with atomic_path(out_dir / name) as tmp:
                tmp.write_bytes(data)
        elif name in own:  # a plot an earlier report wrote that no longer applies would mislead
            (out_dir / name).unlink()
    write_json(out_dir / "report.json", result)
    written = [*texts, *(n for n, data in images.items() if data is not None), "report.json"]
    write_json(out_dir / MANIFEST, {"written_by": "longctx report",
                                    "files": {n: _sha256(out_dir / n) for n in written}})
    log.info("report: %d runs in %d (model, dataset) groups -> %s", len(runs), len(rows), out_dir)
    for note in notes:
        log.info("note: %s", note)
    return result
