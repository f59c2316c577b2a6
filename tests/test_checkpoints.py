"""Checkpoints count only when complete; final model folders are written aside and renamed."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from longctx.checkpoints import (
    checkpoint_problem,
    find_checkpoints,
    safetensors_problem,
    staged_folder,
)
from longctx.common import LongctxError
from longctx.data.squad import write_squad
from longctx.data.synthetic import long_qa_examples

# 2 questions (about 14 windows): 2 optimizer steps per epoch, a checkpoint after each epoch (the last 2 kept)
TINY = dict(max_length=96, doc_stride=32, per_device_train_batch_size=8, per_device_eval_batch_size=8,
            learning_rate=1e-3, logging_steps=1, precision="fp32", max_train_samples=2, num_train_epochs=3)


def _truncate(path: Path, keep: float = 0.5) -> None:
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.truncate(int(size * keep))


def _fake_checkpoint(folder: Path, step: int) -> Path:
    """A checkpoint folder with whole files of the kinds the Trainer writes (tiny tensors, real formats)."""
    import torch
    from safetensors.torch import save_file

    ckpt = folder / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    save_file({"w": torch.arange(64, dtype=torch.float32)}, ckpt / "model.safetensors")
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        torch.save({"x": torch.ones(16)}, ckpt / name)
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return ckpt


def test_torn_files_of_every_kind_are_recognised(tmp_path):
    folder = tmp_path / "checkpoints"
    complete = [_fake_checkpoint(folder, s) for s in (1, 2, 3, 4, 5, 6)]
    assert all(checkpoint_problem(c) is None for c in complete)
    _truncate(complete[5] / "model.safetensors")  # weights cut during the save
    assert "model.safetensors" in safetensors_problem(complete[5] / "model.safetensors")
    _truncate(complete[4] / "optimizer.pt", 0.9)  # optimizer archive cut
    (complete[3] / "trainer_state.json").unlink()  # killed before the state was written
    (complete[2] / "trainer_state.json").write_text(json.dumps({"global_step": 2}))  # another step's state
    found, torn = find_checkpoints(folder)
    assert found is not None and found.path == complete[1] and found.step == 2
    assert [p.name for p, _ in torn] == ["checkpoint-6", "checkpoint-5", "checkpoint-4", "checkpoint-3"]
    problems = dict((p.name, why) for p, why in torn)
    assert "optimizer.pt" in problems["checkpoint-5"] and "trainer_state.json" in problems["checkpoint-4"]
    assert "not 3" in problems["checkpoint-3"]
    # a safetensors file with extra bytes at the end is not what its header describes either
    with (complete[0] / "model.safetensors").open("ab") as f:
        f.write(b"\0" * 8)
    assert safetensors_problem(complete[0] / "model.safetensors") is not None


def test_staged_folder_appears_only_when_complete(tmp_path):
    target = tmp_path / "model"
    with pytest.raises(RuntimeError):
        with staged_folder(target) as staged:
            (staged / "config.json").write_text("{}")
            raise RuntimeError("killed mid-save")
    assert not target.exists() and list(tmp_path.iterdir()) == []  # nothing half-written, no debris
    with staged_folder(target) as staged:
        assert staged.parent == tmp_path and staged.name.startswith("model.incomplete-")
        (staged / "config.json").write_text("{}")
        (staged / "model.safetensors").write_bytes(b"new")
        assert not target.exists()  # not there until the block ends
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors"]
    assert oct(target.stat().st_mode & 0o777) == oct(0o777 & ~_umask())
    # A used folder (--force, or model/ of a resumed run): the verb's files are replaced, others stay, and old
    # shards go (an old index beside new weights would load the wrong model).
    (target / "notes.txt").write_text("mine")
    (target / "model.safetensors.index.json").write_text("{}")
    with staged_folder(target) as staged:
        (staged / "config.json").write_text('{"v": 2}')
        (staged / "model.safetensors").write_bytes(b"newer")
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors", "notes.txt"]
    assert (target / "model.safetensors").read_bytes() == b"newer"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.fixture(scope="module")
def qa_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qa-data")
    write_squad(long_qa_examples(4, min_words=60, max_words=120, seed=1), folder / "train.json", "1.1")
    write_squad(long_qa_examples(6, min_words=60, max_words=120, seed=2), folder / "dev.json", "1.1")
    return folder / "train.json", folder / "dev.json"


def test_finetune_resume_skips_a_torn_checkpoint_and_matches_an_uninterrupted_run(tiny_encoder_dir, qa_files,
                                                                                   tmp_path, warnings):
    """A kill while the last epoch's checkpoint was written: its weights are cut short. --resume falls back
    to the previous complete checkpoint, says so, and ends exactly where the uninterrupted run ended."""
    from longctx.cli import main
    from longctx.finetune import finetune

    train, dev = qa_files
    model = str(tiny_encoder_dir("bert", max_positions=128))
    whole = finetune(model=model, out=str(tmp_path / "whole"), train_file=str(train), eval_file=str(dev), **TINY)
    steps = whole["train"]["global_step"]
    assert whole["train"]["resumed_from_step"] == 0 and whole["train"]["figures_cover_steps"] == [1, steps]

    run = tmp_path / "run"
    shutil.copytree(tmp_path / "whole", run)  # the same run, to be interrupted
    kept = sorted((run / "checkpoints").iterdir(), key=lambda p: int(p.name.split("-")[1]))
    assert [p.name for p in kept][-1] == f"checkpoint-{steps}" and len(kept) == 2
    previous = int(kept[0].name.split("-")[1])
    # the kill: the newest checkpoint's weights cut short, and nothing written after it
    _truncate(kept[-1] / "model.safetensors")
    for name in ("metrics.json", "predictions.json", "nbest_predictions.json"):
        (run / name).unlink()
    shutil.rmtree(run / "model")

    argv = ["finetune", "--model", model, "--out", str(run), "--train-file", str(train), "--eval-file", str(dev),
            "--resume"] + [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    assert main(argv) == 0
    said = warnings.text
    assert f"checkpoint-{steps}: skipped, torn or incomplete (model.safetensors" in said
    resumed = json.loads((run / "metrics.json").read_text())
    assert resumed["train"]["global_step"] == steps
    assert resumed["train"]["resumed_from_step"] == previous
    assert resumed["train"]["resumed_from"].endswith(f"checkpoint-{previous}")
    assert resumed["train"]["figures_cover_steps"] == [previous + 1, steps]
    assert f"steps {previous + 1}..{steps} only" in resumed["train"]["figures_note"]
    for key in ("exact_match", "f1"):
        assert resumed["eval"][key] == pytest.approx(whole["eval"][key], abs=1e-9)
    assert json.loads((run / "predictions.json").read_text()) == \
        json.loads((tmp_path / "whole" / "predictions.json").read_text())
    _same_weights(run / "model", tmp_path / "whole" / "model")
    assert checkpoint_problem(run / "checkpoints" / f"checkpoint-{steps}") is None  # saved again, whole
    assert not any(".incomplete-" in p.name for p in run.iterdir())


def _same_weights(a: Path, b: Path) -> None:
    import torch
    from safetensors.torch import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_with_only_torn_checkpoints_is_one_line(tmp_path, capsys):
    from longctx.cli import main

    run = tmp_path / "run"
    ckpt = _fake_checkpoint(run / "checkpoints", 3)
    _truncate(ckpt / "model.safetensors")
    assert main(["finetune", "--model", str(tmp_path / "no-model"), "--out", str(run), "--train-file",
                 str(tmp_path / "t.json"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "no complete checkpoint to resume from" in err and "checkpoint-3" in err and "Traceback" not in err
    with pytest.raises(LongctxError, match="nothing to resume"):
        from longctx.checkpoints import resume_checkpoint
        resume_checkpoint(tmp_path / "none", tmp_path)
