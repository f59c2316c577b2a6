"""`longctx report RUNS_DIR`: thesis-style tables (Markdown, org, LaTeX) and plots from a folder of runs.

Every `metrics.json` under RUNS_DIR with evaluation figures (`eval`: EM as `exact_match` (SQuAD 1.1) or
`exact` (SQuAD 2.0), and `f1`) is one run. Runs are grouped by (model, dataset): from the run's cell.json
(written by `longctx sweep`), else from a `<model>/<dataset>/seed-<N>` folder layout, else from the
metrics' model and eval file names. Per group: mean and sample standard deviation (n - 1 in the
denominator; none for n = 1) over the runs, and n. The numbers are the runs' own metrics.json figures.

Folders whose name starts with '.' or '_' (sweep internals, `_models`, `_data`), `*.incomplete-*`
folders (moved aside by the sweep) and cells whose cell.json is not "done" are left out of the tables.
MLM pretraining curves come from TensorBoard event files anywhere under RUNS_DIR (`_models` included).
"""
from __future__ import annotations

import math
import re
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from longctx.common import LongctxError, atomic_path, log, read_json_object, write_json, write_text

_SEED = re.compile(r"^seed-(-?\d+)$")
EVAL_LOSS_TAGS = ("eval/loss", "eval_loss", "eval/mlm_loss")


def _skipped(rel: Path) -> bool:
    return any(part.startswith((".", "_")) or ".incomplete-" in part or part == "checkpoints" for part in rel.parts)


def collect(runs_dir: str | Path, exclude: Path | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """One record per finished QA run under `runs_dir`: model, dataset, seed, em, f1, path; plus notes."""
    root = Path(runs_dir)
    runs: list[dict[str, Any]] = []
    notes: list[str] = []
    for path in sorted(root.rglob("metrics.json")):
        folder = path.parent
        rel = folder.relative_to(root)
        if _skipped(rel) or (exclude is not None and folder.resolve() == exclude.resolve()):
            continue
        metrics = read_json_object(path)
        if metrics is None:
            notes.append(f"{rel}/metrics.json is not a readable JSON object: left out")
            continue
        cell = read_json_object(folder / "cell.json")
        if cell is not None and cell.get("status") != "done":
            notes.append(f"{rel}: cell not finished (cell.json status {cell.get('status')!r}): left out")
            continue
        ev = metrics.get("eval")
        if not isinstance(ev, dict) or "f1" not in ev or ("exact_match" not in ev and "exact" not in ev):
            continue  # training-only or pretraining runs: no QA figures
        run_info = read_json_object(folder / "run.json") or {}
        seed = None
        if cell is not None:
            model, dataset, seed = cell.get("model"), cell.get("dataset"), cell.get("seed")
        elif len(rel.parts) >= 3 and _SEED.match(rel.parts[-1]):
            model, dataset = "/".join(rel.parts[:-2]), rel.parts[-2]
            seed = int(_SEED.match(rel.parts[-1]).group(1))
        else:
            model = Path(str(metrics.get("model") or rel)).name
            eval_file = str(metrics.get("eval_file") or "")
            dataset = Path(eval_file).stem if eval_file else str(rel)
        if seed is None:
            seed = metrics.get("seed", run_info.get("seed"))
        em = ev["exact_match"] if "exact_match" in ev else ev["exact"]
        runs.append({"model": str(model), "dataset": str(dataset), "seed": seed, "em": float(em),
                     "f1": float(ev["f1"]), "path": str(rel)})
    seen: dict[tuple, str] = {}
    for r in runs:
        key = (r["model"], r["dataset"], r["seed"])
        if r["seed"] is not None and key in seen:
            notes.append(f"{r['path']} repeats seed {r['seed']} of {seen[key]} ({r['model']}, {r['dataset']})")
        seen.setdefault(key, r["path"])
    return runs, notes


def _stats(values: list[float]) -> dict[str, Any]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values)}


def _ordered(names: set[str], preferred: list[str]) -> list[str]:
    first = [n for n in preferred if n in names]
    return first + sorted(names - set(first))


def summarize(runs: list[dict[str, Any]], models: list[str] | None = None,
              datasets: list[str] | None = None) -> list[dict[str, Any]]:
    """Rows (model, dataset, em {mean, std, n}, f1 {...}, n, seeds, runs) in matrix order where known."""
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
                         "seeds": [r["seed"] for r in group], "runs": [r["path"] for r in group]})
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


def pivots(rows: list[dict], runs: list[dict], groups: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
    """F1 tables with models as rows: one over the single datasets, and one per multi-language dataset
    (`groups`, from the sweep: xquad -> xquad-ar, xquad-de, ...) with its languages and their average.

    The average is taken per seed over the languages (seeds that have every language), then mean ± sample
    std over those seeds."""
    models, datasets, cells = _pivot(rows)
    groups = {k: v for k, v in (groups or {}).items() if isinstance(v, list)}
    multi = {name: [m for m in members if m in datasets] for name, members in groups.items() if members != [name]}
    multi = {name: members for name, members in multi.items() if members}
    in_multi = {m for members in multi.values() for m in members}
    tables = []
    singles = [d for d in datasets if d not in in_multi]
    if singles:
        tables.append({"title": "F1 by model and dataset", "columns": singles,
                       "rows": [(m, [cells.get((m, d), {}).get("f1") for d in singles])
                                for m in models if any((m, d) in cells for d in singles)]})
    f1 = {(r["model"], r["dataset"], r["seed"]): r["f1"] for r in runs}
    for name, members in multi.items():
        table_rows = []
        for m in models:
            if not any((m, d) in cells for d in members):
                continue
            seeds = [s for s in dict.fromkeys(r["seed"] for r in runs if r["model"] == m and r["dataset"] in members)
                     if s is not None and all((m, d, s) in f1 for d in members)]
            avg = _stats([statistics.fmean(f1[(m, d, s)] for d in members) for s in seeds]) if seeds else None
            table_rows.append((m, [cells.get((m, d), {}).get("f1") for d in members] + [avg]))
        tables.append({"title": f"{name}: F1 by language (avg: per seed over all languages, then over seeds)",
                       "columns": [d[len(name) + 1:] if d.startswith(name + "-") else d for d in members] + ["avg"],
                       "rows": table_rows})
    return tables


NOTE = ("EM and F1 in percent: mean ± sample standard deviation over seeds (n − 1 in the denominator; "
        "no deviation for a single run); n = number of runs (seeds).")


def _cell(stat: dict | None, pm: str = "±", missing: str = "–") -> str:
    return fmt(stat, pm) if stat else missing


def markdown(rows: list[dict], tables: list[dict], title: str, notes: list[str],
             plots: dict[str, tuple[str, str | None]]) -> str:
    lines = [f"# {title}", "", NOTE, "", "| model | dataset | EM | F1 | n | seeds |", "|---|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['dataset']} | {fmt(r['em'])} | {fmt(r['f1'])} | {r['n']} | {_seeds(r)} |")
    for t in tables:
        lines += ["", f"## {t['title']}", "", "| model | " + " | ".join(t["columns"]) + " |",
                  "|---|" + "---:|" * len(t["columns"])]
        lines += [f"| {m} | " + " | ".join(_cell(c) for c in cs) + " |" for m, cs in t["rows"]]
    lines += ["", "## Plots", ""]
    for name, (caption, file) in plots.items():
        lines.append(f"![{caption}]({file})" if file else f"- {caption}: none ({name})")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def org(rows: list[dict], tables: list[dict], title: str, notes: list[str],
        plots: dict[str, tuple[str, str | None]]) -> str:
    lines = [f"#+title: {title}", "", NOTE, "", "| model | dataset | EM | F1 | n | seeds |", "|-"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['dataset']} | {fmt(r['em'])} | {fmt(r['f1'])} | {r['n']} | {_seeds(r)} |")
    for t in tables:
        lines += ["", f"* {t['title']}", "", "| model | " + " | ".join(t["columns"]) + " |", "|-"]
        lines += [f"| {m} | " + " | ".join(_cell(c) for c in cs) + " |" for m, cs in t["rows"]]
    lines += ["", "* Plots", ""]
    for name, (caption, file) in plots.items():
        lines += [f"#+caption: {caption}", f"[[file:{file}]]", ""] if file else [f"- {caption}: none ({name})"]
    if notes:
        lines += ["", "* Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(text: str) -> str:
    return "".join(_TEX.get(c, c) for c in str(text))


def latex(rows: list[dict], tables: list[dict], title: str) -> str:
    """booktabs tables: EM/F1/n per model x dataset, then the F1 tables of `pivots`."""
    pm = r"$\pm$"
    out = ["% Generated by `longctx report`; needs \\usepackage{booktabs}.",
           r"\begin{table}[ht]", r"\centering", r"\begin{tabular}{llrrr}", r"\toprule",
           r"Model & Dataset & EM & F1 & $n$ \\", r"\midrule"]
    for r in rows:
        out.append(f"{tex_escape(r['model'])} & {tex_escape(r['dataset'])} & {fmt(r['em'], pm)} & "
                   f"{fmt(r['f1'], pm)} & {r['n']} \\\\")
    out += [r"\bottomrule", r"\end{tabular}",
            f"\\caption{{{tex_escape(title)}: EM and F1 (\\%), mean {pm} sample standard deviation over seeds "
            f"($n-1$ denominator); $n$ runs.}}", r"\end{table}"]
    for t in tables:
        out += ["", r"\begin{table}[ht]", r"\centering", r"\begin{tabular}{l" + "r" * len(t["columns"]) + "}",
                r"\toprule", "Model & " + " & ".join(tex_escape(c) for c in t["columns"]) + r" \\", r"\midrule"]
        out += [tex_escape(m) + " & " + " & ".join(_cell(c, pm, "--") for c in cs) + r" \\" for m, cs in t["rows"]]
        out += [r"\bottomrule", r"\end{tabular}", f"\\caption{{{tex_escape(title)}: {tex_escape(t['title'])} (\\%).}}",
                r"\end{table}"]
    return "\n".join(out) + "\n"


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def plot_f1(rows: list[dict], path: Path, per_panel: int = 14) -> bool:
    """Grouped bars, one group per dataset with a bar per model that ran it (error bars: sample std over
    seeds); many datasets are wrapped into panels of `per_panel`."""
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models, datasets, cells = _pivot(rows)
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(models)}
    panels = [datasets[i:i + per_panel] for i in range(0, len(datasets), per_panel)]
    widest = max(sum(1 for d in panel for m in models if (m, d) in cells) for panel in panels)
    width = max(6.0, min(26.0, 1.5 + 0.3 * widest + 0.3 * max(len(p) for p in panels)))
    fig, axes = plt.subplots(len(panels), 1, figsize=(width, 3.8 * len(panels)), squeeze=False)
    top = max(100.0, max(r["f1"]["mean"] + (r["f1"]["std"] or 0) for r in rows) * 1.05)
    most = max(sum(1 for m in models if (m, d) in cells) for d in datasets)
    bar = 0.8 / most
    handles = {}
    for ax, panel in zip(axes[:, 0], panels):
        for j, d in enumerate(panel):
            present = [m for m in models if (m, d) in cells]
            for i, m in enumerate(present):
                stat = cells[(m, d)]["f1"]
                h = ax.bar(j + (i - (len(present) - 1) / 2) * bar, stat["mean"], width=bar, yerr=stat["std"] or 0.0,
                           capsize=3, color=colours[m], label=m)
                handles.setdefault(m, h)
        ax.set_xticks(range(len(panel)))
        rotate = len(panel) > 5
        ax.set_xticklabels(panel, rotation=35 if rotate else 0, ha="right" if rotate else "center")
        ax.set_xlim(-0.6, len(panels[0]) - 0.4)  # the same bar widths in every panel
        ax.set_ylim(0, top)
        ax.set_ylabel("F1 (%)")
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].set_title("F1 per model and dataset (mean ± sample std over seeds)")
    axes[0, 0].legend([handles[m] for m in models], models, fontsize="small", loc="upper left",
                      bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return True


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


def plot_losses(curves: dict[str, list[tuple[int, float]]], path: Path) -> bool:
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, points in curves.items():
        steps, losses = zip(*points)
        m = re.match(r"^_models/([^/]+)/pretrain$", name)
        # matplotlib hides legend labels that start with "_"
        label = f"{m.group(1)} (pretraining)" if m else name.lstrip("_")
        ax.plot(steps, losses, marker="o", markersize=3, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("MLM eval loss (nats per masked token)")
    ax.set_title("Masked-LM evaluation loss during pretraining")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    _save(fig, path)
    plt.close(fig)
    return True


def report(runs_dir: str, /, *, out: str | None = None, title: str | None = None) -> dict[str, Any]:
    """Write Markdown, org and LaTeX tables (EM/F1 mean ± std over seeds per model × dataset) and PNG plots.

    Args:
        runs_dir: folder of runs (e.g. a `longctx sweep` runs_dir); every metrics.json with EM/F1 counts.
        out: folder for report.md, report.org, report.tex, report.json, f1.png, mlm_loss.png
            (default: RUNS_DIR/report).
        title: table title (default: "Results: RUNS_DIR").
    """
    root = Path(runs_dir)
    if not root.is_dir():
        raise LongctxError(f"{root}: runs folder not found")
    out_dir = Path(out) if out else root / "report"
    if out_dir.exists() and not out_dir.is_dir():
        raise LongctxError(f"{out_dir}: exists and is not a folder")
    title = title or f"Results: {root}"
    sweep_info = read_json_object(root / "sweep.json") or {}
    runs, notes = collect(root, exclude=out_dir)
    rows = summarize(runs, sweep_info.get("models"), sweep_info.get("datasets"))
    if not rows:
        notes.append(f"no metrics.json with EM/F1 under {root}")
    out_dir.mkdir(parents=True, exist_ok=True)

    plots: dict[str, tuple[str, str | None]] = {}
    f1_png = out_dir / "f1.png"
    plots["f1"] = ("F1 per model and dataset (mean ± sample std over seeds)",
                   f1_png.name if plot_f1(rows, f1_png) else None)
    curves = loss_curves(root)
    loss_png = out_dir / "mlm_loss.png"
    plots["mlm_loss"] = ("MLM evaluation loss during pretraining",
                         loss_png.name if plot_losses(curves, loss_png) else None)
    if not curves:
        notes.append("no MLM eval-loss curves: no TensorBoard event files with eval/loss under the runs folder "
                     "(they come from `longctx pretrain` runs); mlm_loss.png not written")
    for name, path in (("f1", f1_png), ("mlm_loss", loss_png)):
        if plots[name][1] is None and path.exists():  # a stale plot from an earlier report would mislead
            path.unlink()
    tables = pivots(rows, runs, sweep_info.get("groups"))
    files = {
        "md": write_text(out_dir / "report.md", markdown(rows, tables, title, notes, plots)),
        "org": write_text(out_dir / "report.org", org(rows, tables, title, notes, plots)),
        "tex": write_text(out_dir / "report.tex", latex(rows, tables, title)),
    }
    result = {"runs_dir": str(root), "rows": rows, "tables": tables, "runs": runs, "notes": notes,
              "curves": {k: [list(p) for p in v] for k, v in curves.items()},
              "files": {**{k: str(v) for k, v in files.items()},
                        **{k: str(out_dir / v[1]) for k, v in plots.items() if v[1]}}}
    files["json"] = write_json(out_dir / "report.json", result)
    result["files"]["json"] = str(files["json"])
    log.info("report: %d runs in %d (model, dataset) groups -> %s", len(runs), len(rows), out_dir)
    for note in notes:
        log.info("note: %s", note)
    return result
