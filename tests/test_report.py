"""`longctx report`: tables equal the runs' metrics (mean, sample std, n), valid PNG plots, what is left out."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from longctx.common import LongctxError
from longctx.report import report

PNG = b"\x89PNG\r\n\x1a\n"

# (model, dataset, seed) -> (EM, F1); squad_v2 rows use SQuAD 2.0 keys ("exact").
RUNS = {
    ("roberta_base", "squad", 1): (80.1, 88.25), ("roberta_base", "squad", 2): (81.3, 88.75),
    ("roberta_base", "squad", 3): (79.9, 87.5),
    ("roberta_base", "squad_v2", 1): (70.0, 73.0), ("roberta_base", "squad_v2", 2): (72.0, 74.5),
    ("long", "squad", 1): (83.0, 90.0), ("long", "squad", 2): (84.5, 90.75),
    ("long", "sq3-4096", 1): (75.25, 81.0),  # a single run: no deviation
}


def _write_run(folder: Path, model: str, dataset: str, seed: int, em: float, f1: float, with_cell: bool) -> None:
    folder.mkdir(parents=True)
    ev = {"exact": em, "f1": f1, "total": 100, "HasAns_f1": 1.0} if dataset.endswith("v2") else \
        {"exact_match": em, "f1": f1, "eval_examples": 100}
    (folder / "metrics.json").write_text(json.dumps({"model": model, "seed": seed, "eval": ev}))
    (folder / "run.json").write_text(json.dumps({"seed": seed, "config": {}}))
    if with_cell:
        (folder / "cell.json").write_text(json.dumps({"model": model, "dataset": dataset, "seed": seed,
                                                      "status": "done"}))


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    for i, ((model, dataset, seed), (em, f1)) in enumerate(RUNS.items()):
        _write_run(root / model / dataset / f"seed-{seed}", model, dataset, seed, em, f1, with_cell=i % 2 == 0)
    # Left out: a moved-aside folder, an unfinished cell, sweep internals, a training-only run.
    _write_run(root / "long/squad/seed-3.incomplete-20250101T000000Z", "long", "squad", 3, 0.0, 0.0, False)
    _write_run(root / "long/squad/seed-4", "long", "squad", 4, 0.0, 0.0, False)
    (root / "long/squad/seed-4/cell.json").write_text(json.dumps({"status": "running"}))
    _write_run(root / "_models/long/pretrain", "long", "pretrain", 1, 0.0, 0.0, False)
    (root / "long/train-only/seed-1").mkdir(parents=True)
    (root / "long/train-only/seed-1/metrics.json").write_text(json.dumps({"train": {"train_loss": 1.0}}))
    return root


def _expected():
    groups: dict = {}
    for (model, dataset, _), values in RUNS.items():
        groups.setdefault((model, dataset), []).append(values)
    return groups


def test_tables_equal_the_metrics(runs):
    result = report(str(runs))
    out = runs / "report"
    expected = _expected()
    assert {(r["model"], r["dataset"]) for r in result["rows"]} == set(expected)
    md, org, tex = ((out / f"report.{x}").read_text() for x in ("md", "org", "tex"))
    saved = json.loads((out / "report.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    for row in result["rows"]:
        values = expected[(row["model"], row["dataset"])]
        ems, f1s = [v[0] for v in values], [v[1] for v in values]
        n = len(values)
        assert row["n"] == n
        assert row["em"]["mean"] == statistics.fmean(ems) and row["f1"]["mean"] == statistics.fmean(f1s)
        if n > 1:
            assert row["em"]["std"] == statistics.stdev(ems) and row["f1"]["std"] == statistics.stdev(f1s)
            em_text = f"{statistics.fmean(ems):.2f} ± {statistics.stdev(ems):.2f}"
            f1_text = f"{statistics.fmean(f1s):.2f} ± {statistics.stdev(f1s):.2f}"
        else:
            assert row["em"]["std"] is None
            em_text, f1_text = f"{ems[0]:.2f}", f"{f1s[0]:.2f}"
        line = f"| {row['model']} | {row['dataset']} | {em_text} | {f1_text} | {n} |"
        assert line in md and line in org
        tex_line = (f"{row['model'].replace('_', chr(92) + '_')} & {row['dataset'].replace('_', chr(92) + '_')} & "
                    f"{em_text.replace('±', '$' + chr(92) + 'pm$')} & {f1_text.replace('±', '$' + chr(92) + 'pm$')} "
                    f"& {n} " + chr(92) * 2)
        assert tex_line in tex
    # The sample standard deviation (n - 1) is what the tables say they use, e.g. roberta_base/squad:
    assert "| roberta_base | squad | 80.43 ± 0.76 | 88.17 ± 0.63 | 3 | 1, 2, 3 |" in md
    assert "n − 1" in md and "n-1" in tex.replace("$", "")
    # Pivot: F1 per model and dataset, "–" where a model did not run a dataset.
    assert "| model | sq3-4096 | squad | squad_v2 |" in md
    assert "| long | 81.00 | 90.38 ± 0.53 | – |" in md
    assert "\\begin{tabular}" in tex and "\\toprule" in tex and "roberta\\_base" in tex


def test_left_out_folders_and_notes(runs):
    result = report(str(runs))
    paths = {r["path"] for r in result["runs"]}
    assert len(paths) == len(RUNS)
    assert not any("incomplete" in p or p.startswith("_") or "seed-4" in p or "train-only" in p for p in paths)
    assert any("not finished" in note for note in result["notes"])


def test_png_plots_are_valid_images(runs, tmp_path):
    from PIL import Image
    from torch.utils.tensorboard import SummaryWriter

    # Two pretraining runs' MLM eval loss (what the HF TensorBoard callback logs as eval/loss).
    for name, start in (("roberta-long", 2.1), ("xlm-long", 2.6)):
        writer = SummaryWriter(log_dir=str(runs / "_models" / name / "pretrain" / "tensorboard"))
        for step in range(0, 600, 100):
            writer.add_scalar("eval/loss", start - step / 1000, step)
            writer.add_scalar("train/loss", start + 0.1, step)
        writer.close()
    out = tmp_path / "elsewhere"
    result = report(str(runs), out=str(out))
    assert set(result["curves"]) == {"_models/roberta-long/pretrain", "_models/xlm-long/pretrain"}
    assert result["files"]["mlm_loss"].endswith("mlm_loss.png")
    assert result["curves"]["_models/roberta-long/pretrain"][0] == [0, pytest.approx(2.1)]
    for name in ("f1.png", "mlm_loss.png"):
        data = (out / name).read_bytes()
        assert data[:8] == PNG and len(data) > 5000, name
        with Image.open(out / name) as image:
            image.verify()
        with Image.open(out / name) as image:
            assert image.size[0] > 300 and image.size[1] > 200
    assert "![MLM evaluation loss during pretraining](mlm_loss.png)" in (out / "report.md").read_text()
    assert "[[file:f1.png]]" in (out / "report.org").read_text()


def test_no_pretraining_runs_means_no_loss_plot_and_a_note(runs):
    result = report(str(runs))
    assert not (runs / "report/mlm_loss.png").exists()
    assert any("no MLM eval-loss curves" in n for n in result["notes"])
    assert "MLM evaluation loss during pretraining: none" in (runs / "report/report.md").read_text()


def test_errors_and_empty_folder(tmp_path):
    with pytest.raises(LongctxError, match="runs folder not found"):
        report(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    result = report(str(tmp_path / "empty"))
    assert result["rows"] == [] and (tmp_path / "empty/report/report.md").is_file()
    assert not (tmp_path / "empty/report/f1.png").exists()


def test_cli_writes_the_report(runs):
    from longctx.cli import main

    assert main(["report", str(runs), "--out", str(runs / "r2")]) == 0
    assert (runs / "r2/report.tex").is_file() and (runs / "r2/f1.png").read_bytes()[:8] == PNG


def test_language_tables_average_per_seed_then_over_seeds(tmp_path):
    """With the sweep's groups (sweep.json), each multi-language dataset gets a table with an avg column."""
    root = tmp_path / "runs"
    f1 = {("xlmr", "x-de", 1): 60.0, ("xlmr", "x-es", 1): 70.0, ("xlmr", "x-de", 2): 62.0, ("xlmr", "x-es", 2): 74.0,
          ("xlmr", "x-de", 3): 61.0}  # seed 3 lacks es: left out of the average
    for (model, dataset, seed), value in f1.items():
        _write_run(root / model / dataset / f"seed-{seed}", model, dataset, seed, value - 10, value, True)
    _write_run(root / "xlmr/squad/seed-1", "xlmr", "squad", 1, 80.0, 88.0, True)
    (root / "sweep.json").write_text(json.dumps({"models": ["xlmr"], "datasets": ["squad", "x-de", "x-es"],
                                                 "groups": {"squad": ["squad"], "x": ["x-de", "x-es"]}}))
    result = report(str(root))
    singles, languages = result["tables"]
    assert singles["columns"] == ["squad"] and languages["columns"] == ["de", "es", "avg"]
    (model, stats), = languages["rows"]
    assert model == "xlmr"
    assert stats[0]["mean"] == statistics.fmean([60.0, 62.0, 61.0]) and stats[0]["n"] == 3
    assert stats[2]["mean"] == statistics.fmean([65.0, 68.0]) and stats[2]["std"] == statistics.stdev([65.0, 68.0])
    assert stats[2]["n"] == 2
    md = (root / "report/report.md").read_text()
    assert "| model | de | es | avg |" in md and "| xlmr | 61.00 ± 1.00 | 72.00 ± 2.83 | 66.50 ± 2.12 |" in md


# --------------------------------------------------------------------------------------------------
# --out: nothing a user made is overwritten or deleted without --force
# --------------------------------------------------------------------------------------------------

def test_out_folder_with_user_files_is_refused_without_force(runs, tmp_path, capsys):
    from longctx.cli import main

    out = tmp_path / "mine"
    out.mkdir()
    (out / "report.md").write_text("my own notes\n")
    (out / "mlm_loss.png").write_bytes(b"my own plot")
    with pytest.raises(LongctxError, match=f"^{out}: .*--force"):
        report(str(runs), out=str(out))
    assert main(["report", str(runs), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0] and "Traceback" not in err[0]
    assert (out / "report.md").read_text() == "my own notes\n" and sorted(p.name for p in out.iterdir()) == [
        "mlm_loss.png", "report.md"]
    # --force replaces what report writes, and deletes nothing it did not write: there are no MLM curves
    # here, but the user's mlm_loss.png stays.
    (out / "keep.txt").write_text("x")
    report(str(runs), out=str(out), force=True)
    assert (out / "report.md").read_text().startswith("# Results")
    assert (out / "mlm_loss.png").read_bytes() == b"my own plot" and (out / "keep.txt").read_text() == "x"


def test_rerun_replaces_its_own_files_but_not_edited_ones(runs, tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    tb = runs / "_models/long/pretrain/tensorboard"
    writer = SummaryWriter(log_dir=str(tb))
    for step in (0, 1, 2):
        writer.add_scalar("eval/loss", 3.0 - step, step)
    writer.close()
    out = runs / "report"
    report(str(runs))
    assert (out / "mlm_loss.png").is_file()
    # A rerun over report's own, unchanged files needs no --force; a plot that no longer applies is removed
    # because report wrote it.
    for f in tb.iterdir():
        f.unlink()
    report(str(runs))
    assert not (out / "mlm_loss.png").exists() and (out / "report.md").is_file()
    # Once the user edits a file report wrote, it is theirs: refused without --force.
    (out / "report.md").write_text((out / "report.md").read_text() + "\nmy comment\n")
    with pytest.raises(LongctxError, match=f"^{out}: .*report.md.*--force"):
        report(str(runs))
    assert (out / "report.md").read_text().endswith("my comment\n")
    report(str(runs), force=True)
    assert not (out / "report.md").read_text().endswith("my comment\n")


# --------------------------------------------------------------------------------------------------
# Malformed metrics: one line naming the file and the field, never averaged
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("edit, field", [
    (lambda m: m["eval"].update(f1="88.1"), "eval.f1"),
    (lambda m: m["eval"].update(exact_match=None), "eval.exact_match"),
    (lambda m: m["eval"].update(f1=float("nan")), "eval.f1"),
    (lambda m: m["eval"].update(f1=880.0), "eval.f1"),
    (lambda m: m.update(seed=[1, 2]), "seed"),
    (lambda m: m.update(eval=[1]), "eval"),
])
def test_malformed_metrics_are_one_line_errors(tmp_path, capsys, edit, field):
    from longctx.cli import main

    root = tmp_path / "runs"
    _write_run(root / "m/squad/seed-1", "m", "squad", 1, 80.0, 88.0, with_cell=False)
    bad = root / "other/run"
    bad.mkdir(parents=True)
    metrics = {"model": "m", "eval_file": "squad.json", "eval": {"exact_match": 70.0, "f1": 75.0}}
    edit(metrics)
    (bad / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(LongctxError, match=rf"^{bad / 'metrics.json'}: {field}\b"):
        report(str(root))
    assert not (root / "report").exists()  # checked before anything is written
    assert main(["report", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad / "metrics.json") in err[0]
    # --skip-invalid: the run is left out and the report names it.
    result = report(str(root), skip_invalid=True)
    assert [r["path"] for r in result["runs"]] == ["m/squad/seed-1"]
    assert any(str(Path("other/run/metrics.json")) in n and field in n for n in result["notes"])
    assert "other/run/metrics.json" in (root / "report/report.md").read_text()


@pytest.mark.parametrize("name, text", [("metrics.json", "{not json"), ("metrics.json", "[1, 2]"),
                                        ("cell.json", "{\"status\": \"done\", \"seed\": \"one\"}"),
                                        ("cell.json", "{broken")])
def test_unreadable_run_files_are_errors(tmp_path, name, text):
    root = tmp_path / "runs"
    _write_run(root / "m/squad/seed-1", "m", "squad", 1, 80.0, 88.0, with_cell=False)
    (root / "m/squad/seed-1" / name).write_text(text)
    with pytest.raises(LongctxError, match=rf"^{root / 'm/squad/seed-1' / name}: "):
        report(str(root))


# --------------------------------------------------------------------------------------------------
# Model identity from run metadata, never a folder name
# --------------------------------------------------------------------------------------------------

def _model_folder(folder: Path, source: str | None, steps: int | None = None) -> Path:
    folder.mkdir(parents=True)
    config = {"model_type": "longformer", "max_position_embeddings": 4098, "pad_token_id": 1}
    if source:
        config["longctx"] = {"converted_from": source, "source_model_type": "roberta", "source_positions": 512}
        if steps:
            config["longctx"]["pretrained"] = {"from": "conv", "steps": steps, "block_size": 4096,
                                               "data": "wikitext-103", "global_projections": "kept"}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _hand_run(folder: Path, model: str, f1: float, seed: int | None = None) -> None:
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"model": model, "eval_file": "/data/dev-v1.1.json",
                                                     "seed": seed,
                                                     "eval": {"exact_match": f1 - 5, "f1": f1}}))


def test_models_are_named_by_their_metadata_not_their_folder(tmp_path):
    models = tmp_path / "models"
    roberta = _model_folder(models / "pre1/model", "roberta-base", steps=3000)
    xlmr = _model_folder(models / "pre2/model", "xlm-roberta-base", steps=3000)
    copy = _model_folder(models / "copy/model", "roberta-base", steps=3000)  # same lineage, another folder
    plain = _model_folder(models / "local/model", None)  # no longctx entry: its full path names it
    root = tmp_path / "runs"
    _hand_run(root / "a", str(roberta), 90.0, seed=1)
    _hand_run(root / "b", str(roberta), 92.0, seed=2)
    _hand_run(root / "c", str(xlmr), 80.0, seed=1)
    _hand_run(root / "d", str(copy), 70.0, seed=1)
    _hand_run(root / "e", str(plain), 60.0, seed=1)
    _hand_run(root / "f", "roberta-base", 50.0, seed=1)  # a hub name
    result = report(str(root))
    rows = {r["model"]: r for r in result["rows"]}
    assert len(rows) == 5 and "model" not in rows
    lineage = "roberta-base → Longformer 4096 → MLM 3000 steps (wikitext-103)"
    # Two folders with the same lineage stay apart, each named by its full path too.
    assert rows[f"{lineage} [{roberta}]"]["n"] == 2
    assert rows[f"{lineage} [{copy}]"]["n"] == 1
    assert rows["xlm-roberta-base → Longformer 4096 → MLM 3000 steps (wikitext-103)"]["f1"]["mean"] == 80.0
    assert rows[str(plain)]["f1"]["mean"] == 60.0 and rows["roberta-base"]["f1"]["mean"] == 50.0
    assert {r["dataset"] for r in result["rows"]} == {"dev-v1.1"}
    md = (root / "report/report.md").read_text()
    assert "## Models" in md and str(roberta) in md


def test_reference_pipeline_runs_get_their_own_row(tmp_path):
    root = tmp_path / "runs"
    _hand_run(root / "a", "roberta-base", 50.0, seed=1)
    _hand_run(root / "b", "roberta-base", 40.0, seed=1)
    metrics = json.loads((root / "b/metrics.json").read_text())
    (root / "b/metrics.json").write_text(json.dumps({**metrics, "pipeline": "hf-reference"}))
    rows = {r["model"]: r for r in report(str(root))["rows"]}
    assert rows["roberta-base"]["f1"]["mean"] == 50.0 and rows["roberta-base [hf-reference]"]["f1"]["mean"] == 40.0


def test_cells_whose_settings_changed_are_flagged(tmp_path):
    import yaml

    from longctx.sweep.plan import plan
    from longctx.sweep.registry import Registry

    runs = tmp_path / "runs"
    matrix = tmp_path / "m.yaml"
    raw = {"runs_dir": str(runs), "seeds": [1, 2], "finetune": {"learning_rate": 3e-5},
           "models": {"base": {"model": "roberta-base"}},
           "datasets": {"sq": {"train_file": "t.json", "eval_file": "d.json"},
                        "nq": {"train_file": "t2.json", "eval_file": "d2.json"}}}
    matrix.write_text(yaml.safe_dump(raw))
    p = plan(matrix)
    registry = Registry(p.registry)
    for i, cell in enumerate(p.cells):
        folder = cell.folder(runs)
        _write_run(folder, cell.model, cell.dataset, cell.seed, 70.0 + i, 80.0 + i, with_cell=False)
        (folder / "cell.json").write_text(json.dumps({"cell": cell.name, "model": cell.model, "dataset": cell.dataset,
                                                      "seed": cell.seed, "kwargs": cell.kwargs, "status": "done"}))
        registry.finish(registry.start(cell, folder), "done")
    registry.close()
    (runs / "sweep.json").write_text(json.dumps({"matrix": str(matrix), "models": p.models, "datasets": p.datasets,
                                                 "seeds": p.seeds}))
    raw["datasets"]["nq"]["learning_rate"] = 1e-4  # nq's cells are now "done (settings changed)"
    matrix.write_text(yaml.safe_dump(raw))
    result = report(str(runs))
    rows = {r["dataset"]: r for r in result["rows"]}
    assert rows["sq"]["changed"] == [] and rows["nq"]["changed"] == ["base/nq/seed-1", "base/nq/seed-2"]
    md = (runs / "report/report.md").read_text()
    assert "| base | nq † |" in md and "| base | sq |" in md
    assert "† " in md and "base/nq/seed-1" in md and "settings changed" in md
    assert "^\\dagger" in (runs / "report/report.tex").read_text()


# --------------------------------------------------------------------------------------------------
# Plots: EM and F1, seeds as points beside mean ± std, n in the legend; MLM steps and the source's level
# --------------------------------------------------------------------------------------------------

def test_score_plots_show_every_seed_and_n(runs):
    import matplotlib

    matplotlib.use("Agg")
    from longctx.report import collect, score_figure, summarize

    found, _ = collect(runs)
    rows = summarize(found)
    for metric in ("em", "f1"):
        fig = score_figure(rows, metric)
        ax = fig.axes[0]
        seeds = [tuple(o) for c in ax.collections if c.get_label() == "_seeds" for o in c.get_offsets()]
        assert len(seeds) == len(RUNS)  # every run's own value, single seeds included
        assert sorted(y for _, y in seeds) == sorted(v[0 if metric == "em" else 1] for v in RUNS.values())
        labels = [t.get_text() for t in fig.legends[0].get_texts()]
        assert "long (n = 1–2)" in labels and "roberta_base (n = 2–3)" in labels
        assert ax.get_ylabel().startswith("EM" if metric == "em" else "F1")
    result = report(str(runs))
    for name in ("em.png", "f1.png"):
        assert (runs / "report" / name).read_bytes()[:8] == PNG
    assert result["files"]["em"].endswith("em.png")


def test_mlm_plot_has_integer_steps_and_the_source_level(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from torch.utils.tensorboard import SummaryWriter

    from longctx.report import loss_curves, loss_figure, source_levels

    runs = tmp_path / "runs"
    pre = runs / "_models/long/pretrain"
    writer = SummaryWriter(log_dir=str(pre / "tensorboard"))
    for step, loss in ((0, 4.0), (1, 3.0), (2, 2.5), (3, 2.2)):
        writer.add_scalar("eval/loss", loss, step)
    writer.close()
    (pre / "metrics.json").write_text(json.dumps({"status": "done", "before": {
        "converted": {"model": "conv", "loss": 4.0, "block_size": 4096},
        "source": {"model": "roberta-base", "loss": 1.9, "block_size": 512}}}))
    curves = loss_curves(runs)
    levels = source_levels(runs, curves)
    assert levels == {"_models/long/pretrain": {"model": "roberta-base", "loss": 1.9, "block_size": 512}}
    fig = loss_figure(curves, levels)
    ax = fig.axes[0]
    fig.canvas.draw()
    assert all(float(t).is_integer() for t in ax.get_xticks())
    flat = [line for line in ax.get_lines() if len(set(line.get_ydata())) == 1]
    assert flat and flat[0].get_ydata()[0] == 1.9
    assert any("roberta-base" in t.get_text() and "512" in t.get_text() for t in ax.get_legend().get_texts())
    result = report(str(runs))
    assert result["source_levels"] == levels


def test_hostile_folders_and_files_are_one_line_errors(tmp_path, capsys):
    from longctx.cli import main

    root = tmp_path / "runs"
    _write_run(root / "m/squad/seed-1", "m", "squad", 1, 80.0, 88.0, with_cell=False)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    deep = root / "deep/run"
    deep.mkdir(parents=True)
    (deep / "metrics.json").write_text("[" * 100_000 + "]" * 100_000)
    cases = [([str(a_file)], f"{a_file}: not a folder"),
             ([str(root), "--out", str(a_file / "sub")], f"{a_file / 'sub'}: {a_file} is a file"),
             ([str(root)], f"{deep / 'metrics.json'}: ")]
    for argv, message in cases:
        assert main(["report", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)
    assert not (root / "report").exists()
    # A malformed sweep.json only orders tables: its bad entries are ignored with a note.
    (deep / "metrics.json").unlink()
    (root / "sweep.json").write_text(json.dumps({"models": [{"x": 1}], "groups": {"x": "y"}, "matrix": 3,
                                                 "seeds": "all"}))
    result = report(str(root))
    assert [r["model"] for r in result["rows"]] == ["m"]
    assert any("sweep.json: models" in n for n in result["notes"])
