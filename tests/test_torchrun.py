"""`torchrun --nproc_per_node=2 -m longctx finetune|evaluate` on CPU (DDP over gloo) with a tiny BERT (issue #6).

Both ranks train, rank 0 alone writes the outputs, and the run matches a single process that takes the
same 8 windows per optimizer step."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from longctx.data.squad import write_squad
from longctx.data.synthetic import long_qa_examples
from longctx.testing import tiny_encoder
from longctx.finetune import evaluate, finetune

STEPS = 6
# Shared by both runs. Random sampling (--no-group-by-length) because LengthGroupedSampler builds its
# mega-batches from the per-device batch size (4 vs 8), which would give the two runs different batches.
ARGS = dict(max_length=96, doc_stride=32, max_steps=STEPS, precision="fp32", learning_rate=1e-3, logging_steps=1,
            group_by_length=False, seed=42)
OUTPUTS = {"checkpoints", "metrics.json", "model", "nbest_predictions.json", "predictions.json", "run.json",
           "tensorboard"}


def _flags(values: dict) -> list[str]:
    flags = []
    for key, value in values.items():
        flag = "--" + key.replace("_", "-")
        flags += ([flag] if value else ["--no-" + flag[2:]]) if isinstance(value, bool) else [flag, str(value)]
    return flags


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    """Two CPU ranks; --standalone picks a free rendezvous port itself (no port race between test runs)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "longctx", *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("torchrun")
    # Dropout off: with it on, each rank draws its own masks and no single-process run can reproduce them
    # (seen as ~0.3% step-loss differences). Without it the comparison below can be exact up to float rounding.
    source = tiny_encoder("bert", folder / "src", max_positions=128)
    config = json.loads((source / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (source / "config.json").write_text(json.dumps(config))
    write_squad(long_qa_examples(32, min_words=60, max_words=120, seed=1), folder / "train.json", "1.1")
    write_squad(long_qa_examples(8, min_words=60, max_words=120, seed=2), folder / "dev.json", "1.1")
    # ~60 eval windows (the count varies a little: the tiny tokenizer's training is not deterministic). Pick
    # an eval batch size that leaves two ranks an uneven last round, so accelerate pads it with repeated
    # windows and gather_for_metrics must drop them again: the case that could misalign windows and logits.
    windows = _eval_windows(source, folder / "dev.json")
    eval_batch = next(b for b in (4, 3, 5) if windows % (2 * b))
    return folder, source, dict(ARGS, per_device_eval_batch_size=eval_batch)


def _eval_windows(source, dev) -> int:
    from datasets import Dataset
    from transformers import AutoTokenizer

    from longctx.finetune import load_examples
    from longctx.qa.features import prepare_eval_features

    examples = Dataset.from_list(load_examples(str(dev))[0])
    features = examples.map(prepare_eval_features, batched=True, remove_columns=examples.column_names,
                            fn_kwargs=dict(tokenizer=AutoTokenizer.from_pretrained(source), max_length=96,
                                           doc_stride=32, global_attention=False))
    return len(features)


@pytest.fixture(scope="module")
def ddp_run(data):
    folder, source, args = data
    out = folder / "ddp"
    done = _torchrun("finetune", "--model", str(source), "--out", str(out), "--train-file", str(folder / "train.json"),
                     "--eval-file", str(folder / "dev.json"), "--per-device-train-batch-size", "4", *_flags(args))
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def _history(out) -> list[dict]:
    state = json.loads((out / "checkpoints" / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    return [h for h in state["log_history"] if "loss" in h]


def test_torchrun_finetune_matches_single_process(data, ddp_run, tmp_path):
    folder, source, args = data
    dev_ids = [q["id"] for a in json.loads((folder / "dev.json").read_text())["data"] for p in a["paragraphs"]
               for q in p["qas"]]
    ddp = json.loads((ddp_run / "metrics.json").read_text())
    # Both ranks trained: the Trainer ran with two processes, and rank 1 saved its RNG state in the checkpoint.
    assert ddp["train"]["world_size"] == 2 and ddp["train"]["global_step"] == STEPS
    assert sorted(p.name for p in (ddp_run / "checkpoints" / f"checkpoint-{STEPS}").glob("rng_state_*.pth")) == [
        "rng_state_0.pth", "rng_state_1.pth"]
    # One set of outputs, written by rank 0 only: nothing else (no leftover temp files), one TensorBoard writer.
    assert {p.name for p in ddp_run.iterdir()} == OUTPUTS
    # (the final EM/F1 are logged after training, which reopens rank 0's writer: a second file of the same process)
    writers = {p.name.split(".")[-2] for p in (ddp_run / "tensorboard").glob("events.out.tfevents.*")}
    assert len(writers) == 1, writers
    assert (ddp_run / "model" / "model.safetensors").is_file()
    predictions = json.loads((ddp_run / "predictions.json").read_text())
    assert sorted(predictions) == sorted(dev_ids)

    # Single process, 8 windows per step. With random sampling and the same seed, accelerate deals the same
    # permutation out to the ranks in batches of 4, so global step k sees the same 8 windows as the single
    # run's step k; the loss is a mean over the batch and DDP averages the two ranks' gradients, so the
    # updates agree up to float rounding (summation order, gloo all-reduce): measured < 1e-6 relative.
    # 1e-4 leaves room for that and still fails on any change of batches (those move the loss by ~1e-2).
    single_out = tmp_path / "single"
    single = finetune(model=str(source), out=str(single_out), train_file=str(folder / "train.json"),
                      eval_file=str(folder / "dev.json"), per_device_train_batch_size=8, save_model=False, **args)
    assert single["train"]["world_size"] == 1
    ddp_steps, single_steps = _history(ddp_run), _history(single_out)
    assert [h["step"] for h in ddp_steps] == [h["step"] for h in single_steps] == list(range(1, STEPS + 1))
    for d, s in zip(ddp_steps, single_steps):
        assert d["loss"] == pytest.approx(s["loss"], rel=1e-4), (d, s)
        assert d["grad_norm"] == pytest.approx(s["grad_norm"], rel=1e-4), (d, s)
    assert ddp["train"]["train_loss"] == pytest.approx(single["train"]["train_loss"], rel=1e-4)
    # Same weights up to rounding -> the same answers, and DDP evaluation returned every window in order.
    assert predictions == json.loads((single_out / "predictions.json").read_text())
    assert ddp["eval"]["f1"] == pytest.approx(single["eval"]["f1"], abs=1e-9)
    print("torchrun vs single process:", json.dumps({"ddp": ddp["train"], "single": single["train"]}))

    # The DDP evaluation path on its own: the weights rank 0 saved, scored in one process, give the same
    # n-best spans and logits as the two-rank evaluation at the end of training (a window shifted by a
    # position in the gathered logits would change them).
    alone = tmp_path / "alone"
    evaluate(model=str(ddp_run / "model"), data=str(folder / "dev.json"), out=str(alone), max_length=96,
             doc_stride=32, per_device_eval_batch_size=args["per_device_eval_batch_size"], precision="fp32")
    two, one = (json.loads((d / "nbest_predictions.json").read_text()) for d in (ddp_run, alone))
    assert two.keys() == one.keys()
    for qid in one:
        assert [(c["start"], c["end"]) for c in two[qid]] == [(c["start"], c["end"]) for c in one[qid]]
        assert [c["start_logit"] for c in two[qid]] == pytest.approx([c["start_logit"] for c in one[qid]], abs=1e-5)


def test_torchrun_evaluate_and_refusal(data, ddp_run, tmp_path):
    folder, _, args = data
    out = tmp_path / "eval"
    done = _torchrun("evaluate", "--model", str(ddp_run / "model"), "--data", str(folder / "dev.json"), "--out",
                     str(out), "--max-length", "96", "--doc-stride", "32", "--per-device-eval-batch-size",
                     str(args["per_device_eval_batch_size"]), "--precision", "fp32")
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout)  # one JSON object: only rank 0 prints
    assert printed["f1"] == json.loads((ddp_run / "metrics.json").read_text())["eval"]["f1"]
    # (checkpoints/ is the Trainer's empty output_dir, made by rank 0 as in a single-process evaluate.)
    assert {p.name for p in out.iterdir()} - {"checkpoints"} == {"metrics.json", "nbest_predictions.json",
                                                                 "predictions.json", "run.json"}
    assert json.loads((out / "predictions.json").read_text()) == json.loads(
        (ddp_run / "predictions.json").read_text())

    # A second run into the finished folder: rank 0 refuses once with the usual one-line error (exit 2) and
    # torchrun stops rank 1; nothing of the first run is touched.
    before = (ddp_run / "metrics.json").read_bytes()
    again = _torchrun("finetune", "--model", str(ddp_run / "model"), "--out", str(ddp_run), "--train-file",
                      str(folder / "train.json"), "--max-length", "96", "--doc-stride", "32", "--max-steps", "1",
                      "--precision", "fp32")
    assert again.returncode != 0
    assert again.stderr.count("output folder is not empty") == 1, again.stderr[-3000:]
    assert (ddp_run / "metrics.json").read_bytes() == before
