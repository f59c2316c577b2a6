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
