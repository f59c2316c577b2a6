"""The hf-reference pipeline (plain HF Trainer, run_qa.py's defaults), the spread evaluation sample and the
bundled MiniLM name: what the MiniLM study (experiments/study/minilm.yaml) and bench/finetune.py rely on."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from longctx.common import LongctxError
from longctx.data.squad import load_squad, spread_sample, write_squad
from longctx.data.synthetic import long_qa_examples
from longctx.finetune import finetune, load_examples
from longctx.qa.reference import reference_features

TINY = dict(max_length=96, doc_stride=32, per_device_train_batch_size=4, learning_rate=1e-3, logging_steps=5)


@pytest.fixture(scope="module")
def qa_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ref-data")
    write_squad(long_qa_examples(16, min_words=60, max_words=120, seed=3), folder / "train.json", "1.1")
    write_squad(long_qa_examples(6, min_words=60, max_words=120, seed=4), folder / "dev.json", "1.1")
    return folder / "train.json", folder / "dev.json"


def test_reference_runs_through_finetune_route_and_records_itself(tiny_encoder_dir, qa_files, tmp_path):
    train, dev = qa_files
    out = tmp_path / "ref"
    metrics = finetune(model=str(tiny_encoder_dir("bert", max_positions=128)), out=str(out), pipeline="hf-reference",
                       train_file=str(train), eval_file=str(dev), max_steps=3, **TINY)
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert on_disk["pipeline"] == "hf-reference" and on_disk["train"]["global_step"] == 3
    # every window padded to max_length: real tokens are fewer than windows x 96
    assert on_disk["train"]["real_tokens"] < on_disk["train"]["windows"] * 96
    assert 0 <= on_disk["eval"]["f1"] <= 100 and on_disk["eval"]["eval_examples"] == 6
    run = json.loads((out / "run.json").read_text())
    assert run["precision"]["name"] == "fp32" and "run_qa.py" in run["precision"]["reason"]
    assert run["config"]["pipeline"] == "hf-reference" and run["config"]["max_length"] == 96
    assert not (out / "checkpoints").exists()
    # predictions in the official format, scored the same by `longctx score`
    scored = subprocess.run([sys.executable, "-m", "longctx", "score", "--data", str(dev), "--predictions",
                             str(out / "predictions.json")], capture_output=True, text=True, check=True)
    assert json.loads(scored.stdout)["f1"] == pytest.approx(metrics["eval"]["f1"], abs=1e-9)


def test_reference_refuses_longctx_only_fields_by_name(tiny_encoder_dir, qa_files, tmp_path):
    train, dev = qa_files
    with pytest.raises(LongctxError, match="group_by_length"):
        finetune(model=str(tiny_encoder_dir("bert", max_positions=128)), out=str(tmp_path / "x"),
                 pipeline="hf-reference", train_file=str(train), group_by_length=False)
    assert not (tmp_path / "x").exists()


def test_reference_cli_help_is_the_references_own():
    proc = subprocess.run([sys.executable, "-m", "longctx", "finetune", "--pipeline", "hf-reference", "--help"],
                          capture_output=True, text=True)
    assert proc.returncode == 0
    assert "run_qa.py" in proc.stdout and "--group-by-length" not in proc.stdout


def test_reference_refuses_squad_v2_before_any_folder(tmp_path):
    v2 = tmp_path / "dev-v2.json"
    examples = long_qa_examples(3, seed=5)
    examples[0] = {**examples[0], "answers": {"text": [], "answer_start": []}, "is_impossible": True}
    write_squad(examples, v2, "v2.0")
    proc = subprocess.run([sys.executable, "-m", "longctx", "finetune", "--pipeline", "hf-reference", "--model",
                           "bert-base-uncased", "--eval-file", str(v2), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and str(v2) in proc.stderr and "2.0" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_reference_labels_mark_the_answer_tokens(tiny_encoder_dir):
    from longctx.models import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_encoder_dir("bert", max_positions=128)))
    examples = long_qa_examples(6, min_words=60, max_words=120, seed=6)
    columns, _ = reference_features(examples, tokenizer, max_length=64, doc_stride=16, train=True)
    assert all(len(ids) == 64 for ids in columns["input_ids"])  # padded to max_length
    same = tokenizer([e["question"].lstrip() for e in examples], [e["context"] for e in examples],
                     truncation="only_second", max_length=64, stride=16, return_overflowing_tokens=True,
                     return_offsets_mapping=True, padding="max_length")
    inside = 0
    for w, (s, e) in enumerate(zip(columns["start_positions"], columns["end_positions"])):
        ex = examples[same["overflow_to_sample_mapping"][w]]
        a_start = ex["answers"]["answer_start"][0]
        a_end = a_start + len(ex["answers"]["text"][0])
        seq = same.sequence_ids(w)
        ctx = [i for i, x in enumerate(seq) if x == 1]
        whole = same["offset_mapping"][w][ctx[0]][0] <= a_start and same["offset_mapping"][w][ctx[-1]][1] >= a_end
        if not whole:
            assert (s, e) == (0, 0)  # not wholly inside: labelled with the first token, as run_qa.py does
            continue
        inside += 1
        assert seq[s] == seq[e] == 1 and s <= e
        assert same["offset_mapping"][w][s][0] <= a_start < same["offset_mapping"][w][s][1]
        assert same["offset_mapping"][w][e][0] < a_end <= same["offset_mapping"][w][e][1]
    assert inside  # some windows hold their answer


def test_spread_sample_covers_every_article(shared_file):
    dev = shared_file("squad-v1.1/dev-v1.1.json")
    examples = load_squad(str(dev)).examples
    titles = {e["title"] for e in examples}
    sample = spread_sample(examples, 200)
    assert len(sample) == 200 and len({e["id"] for e in sample}) == 200
    assert {e["title"] for e in sample} == titles  # all 48 articles
    assert len({e["title"] for e in examples[:200]}) == 1  # the first 200 are one article
    loaded, _ = load_examples(str(dev), "squad", 200, sample="spread")
    assert [e["id"] for e in loaded] == [e["id"] for e in sample]
    assert spread_sample(examples, None) is examples and spread_sample(examples[:5], 10) == examples[:5]


def test_bundled_minilm_name_resolves_to_its_package_folder(minilm_dir):
    from pathlib import Path

    from longctx.models import BUNDLED_MINILM, resolve_model

    folder = Path(resolve_model(BUNDLED_MINILM))
    assert (folder / "config.json").is_file() and folder == Path(minilm_dir)
