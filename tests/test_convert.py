"""Conversion to Longformer: exactness, long inputs, plain-transformers loading, and every user error."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModel, AutoModelForMaskedLM, AutoModelForQuestionAnswering, AutoTokenizer

from longctx.cli import main
from longctx.common import LongctxError
from longctx.convert import to_long
from longctx.models import add_length_guard

TEXTS = ["Who was born in Paris in 1990?",
         "Ada was born in Paris in 1990 and moved to Rome, where she played music for the national team."]


def _max_diff(source_dir, long_dir, mlm: bool) -> float:
    auto = AutoModelForMaskedLM if mlm else AutoModel
    source, long = auto.from_pretrained(source_dir).eval(), auto.from_pretrained(long_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(long_dir)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")  # the first row is padded
    assert (batch["attention_mask"] == 0).any()
    with torch.no_grad():
        a, b = source(**batch), long(**batch)
    key = "logits" if mlm else "last_hidden_state"
    real = batch["attention_mask"].bool()  # padded positions are masked out by both models
    return (a[key][real] - b[key][real]).abs().max().item()


@pytest.mark.parametrize("family", ["roberta", "xlm-roberta", "bert"])
def test_converted_equals_source_below_window(family, tiny_encoder_dir, tmp_path):
    src = tiny_encoder_dir(family, max_positions=64)
    out = tmp_path / "long"
    model = to_long(str(src), str(out), max_pos=256, attention_window=64)
    assert type(model).__name__ == "LongformerForMaskedLM"
    # Every token of these inputs lies within half a window (32) of every other, so sliding-window
    # attention sees exactly what full attention sees and the outputs must agree.
    assert _max_diff(src, out, mlm=True) < 1e-4

    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "longformer"
    assert config["attention_window"] == [64, 64]
    assert config["type_vocab_size"] == (2 if family == "bert" else 1)
    offset = config["pad_token_id"] + 1
    assert config["max_position_embeddings"] == 256 + offset
    assert AutoTokenizer.from_pretrained(out).model_max_length == 256

    source = AutoModelForMaskedLM.from_pretrained(src)
    src_table = source.base_model.embeddings.position_embeddings.weight
    src_rows = src_table[2:] if family != "bert" else src_table
    table = model.longformer.embeddings.position_embeddings.weight
    assert table.shape[0] == 256 + offset
    for k in range(4):  # tiled: each block of 64 new rows is the source's 64 learned rows
        assert torch.equal(table[offset + 64 * k: offset + 64 * (k + 1)], src_rows)
    # transformers 5 derives position ids from input ids; older versions kept a buffer that had to be resized.
    buffer = getattr(model.longformer.embeddings, "position_ids", None)
    assert buffer is None or buffer.shape[-1] == 256 + offset
    assert not any(t.is_meta for t in list(model.parameters()) + list(model.buffers()))
    for layer in model.longformer.encoder.layer:
        attn = layer.attention.self
        for proj in ("query", "key", "value"):
            assert torch.equal(getattr(attn, proj).weight, getattr(attn, f"{proj}_global").weight)
            assert torch.equal(getattr(attn, proj).bias, getattr(attn, f"{proj}_global").bias)


def test_headless_source_becomes_longformer_model(tiny_encoder_dir, tmp_path):
    src = tiny_encoder_dir("roberta", mlm_head=False, max_positions=64)
    model = to_long(str(src), str(tmp_path / "long"), max_pos=128, attention_window=64)
    assert type(model).__name__ == "LongformerModel"
    assert _max_diff(src, tmp_path / "long", mlm=False) < 1e-4


@pytest.fixture(scope="module")
def minilm_long(minilm_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("minilm-long")
    to_long(str(minilm_dir), str(out), max_pos=4096, attention_window=512, force=True)
    return out


def test_real_minilm_equals_source_and_runs_3000_tokens(minilm_dir, minilm_long):
    assert _max_diff(minilm_dir, minilm_long, mlm=False) < 1e-4

    tokenizer = AutoTokenizer.from_pretrained(minilm_long)
    model = add_length_guard(AutoModel.from_pretrained(minilm_long).eval())
    ids = tokenizer(" ".join(["the river flows north past the old city"] * 400), truncation=True,
                    max_length=3000, return_tensors="pt")
    assert ids["input_ids"].shape[1] == 3000
    with torch.no_grad():
        hidden = model(**ids).last_hidden_state
    assert hidden.shape == (1, 3000, 384) and torch.isfinite(hidden).all()

    too_long = torch.full((1, 4100), tokenizer.unk_token_id)
    with pytest.raises(LongctxError, match="longer than the model's 4096 positions"):
        model(input_ids=too_long)


def test_saved_folder_loads_as_plain_qa_model(minilm_long):
    tokenizer = AutoTokenizer.from_pretrained(minilm_long)
    model = AutoModelForQuestionAnswering.from_pretrained(minilm_long).eval()
    assert type(model).__name__ == "LongformerForQuestionAnswering"
    batch = tokenizer("Where was Ada born?", "Ada was born in Paris. " * 300, return_tensors="pt")
    question = (batch["token_type_ids"] == 0) & (batch["attention_mask"] == 1)
    with torch.no_grad():
        out = model(**batch, global_attention_mask=question.long())
    assert out.start_logits.shape == batch["input_ids"].shape
    assert torch.isfinite(out.start_logits).all()


def _cli_error(capsys, *argv) -> str:
    assert main(["convert", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def test_errors_are_one_line(tiny_encoder_dir, tmp_path, capsys):
    src = str(tiny_encoder_dir("bert", max_positions=64))
    out = str(tmp_path / "out")
    assert "not larger than the source's 64 positions" in _cli_error(
        capsys, "--model", src, "--out", out, "--max-pos", "64", "--attention-window", "32")
    assert "not a multiple of the attention window" in _cli_error(
        capsys, "--model", src, "--out", out, "--max-pos", "200", "--attention-window", "64")
    assert "source model not found" in _cli_error(capsys, "--model", str(tmp_path / "nope"), "--out", out)

    gpt2 = tmp_path / "gpt2"
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(gpt2)
    err = _cli_error(capsys, "--model", str(gpt2), "--out", out)
    assert "unsupported architecture 'gpt2'" in err and "roberta" in err and "bert" in err

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("a user's file")
    assert "not empty" in _cli_error(capsys, "--model", src, "--out", str(tmp_path / "full"),
                                     "--max-pos", "128", "--attention-window", "32")
    assert (tmp_path / "full" / "mine.txt").read_text() == "a user's file"
    assert main(["convert", "--model", src, "--out", str(tmp_path / "full"), "--max-pos", "128",
                 "--attention-window", "32", "--force"]) == 0


def test_cli_subprocess_logs_and_exit_codes(tiny_encoder_dir, tmp_path):
    src = str(tiny_encoder_dir("xlm-roberta", max_positions=64))
    ok = subprocess.run([sys.executable, "-m", "longctx", "convert", "--model", src, "--out", str(tmp_path / "a"),
                         "--max-pos", "512", "--attention-window", "64"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "64 -> 512 positions" in ok.stderr and "attention window 64" in ok.stderr
    bad = subprocess.run([sys.executable, "-m", "longctx", "convert", "--model", src, "--out", str(tmp_path / "a"),
                          "--max-pos", "512", "--attention-window", "64"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "Traceback" not in bad.stderr, bad.stderr
