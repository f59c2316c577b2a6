"""Model loading: the one local-vs-hub decision, one-line errors from every loader, quiet loading, the length
guard and fast attention, model facts, and the shared copy of Longformer's global projections."""
from __future__ import annotations

import json
import re

import pytest
import torch

from longctx.cli import main
from longctx.common import LongctxError
from longctx.models import (copy_global_projections, load_mlm, load_qa_model, load_seq2seq, load_tokenizer,
                            looks_local, model_max_tokens, quiet_transformers, resolve_model, uses_fast_attention)


def _tiny_longformer(window: int = 16, positions: int = 64):
    from transformers import LongformerConfig, LongformerForMaskedLM

    config = LongformerConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=32, attention_window=[window] * 2,
                              max_position_embeddings=positions + 2, pad_token_id=1)
    return config, LongformerForMaskedLM


@pytest.mark.parametrize("name", ["roberta-base", "FacebookAI/roberta-base", "google-t5/t5-small"])
def test_hub_names_are_left_to_the_hub(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing of that name here
    assert not looks_local(name)
    assert resolve_model(name) == name


@pytest.mark.parametrize("name", ["./gone", "/no/such/folder", "runs/convert/gone", "~/no-such-longctx-model",
                                  "gone/"])
def test_a_missing_local_looking_path_is_one_line(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert looks_local(name)
    with pytest.raises(LongctxError) as e:
        resolve_model(name, "source model")
    assert str(e.value) == f"{name}: source model not found"


def test_a_folder_without_config_is_one_line_and_a_model_folder_resolves(tmp_path, monkeypatch):
    empty = tmp_path / "owner" / "name"  # looks like a hub name, but exists here: the folder wins
    empty.mkdir(parents=True)
    (empty / "weights.bin").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert looks_local("owner/name")
    with pytest.raises(LongctxError) as e:
        resolve_model("owner/name")
    assert str(e.value) == "owner/name: model folder has no config.json (not a saved transformers model)"
    (empty / "config.json").write_text("{}")
    assert resolve_model("owner/name") == "owner/name"


def test_every_loader_makes_the_same_decision(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for load, what in ((load_tokenizer, "model"), (load_qa_model, "model"), (load_mlm, "model"),
                       (load_seq2seq, "encoder-decoder (seq2seq) model")):
        with pytest.raises(LongctxError, match="^" + re.escape(f"{empty}: {what} folder has no config.json")):
            load(str(empty))
        with pytest.raises(LongctxError, match="^" + re.escape(f"{tmp_path / 'gone'}: {what} not found") + "$"):
            load(str(tmp_path / "gone"))


@pytest.mark.parametrize("argv", [["convert", "--out", "{tmp}/out"], ["evaluate", "--data", "{tmp}/dev.json"]])
def test_verbs_print_the_decision_as_one_line(argv, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    from longctx.data.squad import write_squad  # evaluate checks its data before the model: give it valid data
    from longctx.testing import synthetic_qa

    write_squad(synthetic_qa(2, seed=0), tmp_path / "dev.json", "1.1")
    args = [a.format(tmp=tmp_path) for a in argv] + ["--model", str(tmp_path / "empty")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "folder has no config.json" in err and str(tmp_path / "empty") in err, err


def test_quiet_transformers_restores_verbosity_and_progress_bars():
    import transformers
    from transformers.utils import logging as hf_logging

    transformers.logging.set_verbosity_info()
    hf_logging.enable_progress_bar()
    try:
        with quiet_transformers():
            assert transformers.logging.get_verbosity() == transformers.logging.ERROR
            assert not hf_logging.is_progress_bar_enabled()
        assert transformers.logging.get_verbosity() == transformers.logging.INFO
        assert hf_logging.is_progress_bar_enabled()
        with pytest.raises(RuntimeError), quiet_transformers():
            raise RuntimeError("a failed load")
        assert transformers.logging.get_verbosity() == transformers.logging.INFO
    finally:
        transformers.logging.set_verbosity_error()


def test_model_max_tokens_counts_positions_after_the_padding_rows():
    from transformers import BertConfig, RobertaConfig

    assert model_max_tokens(BertConfig(max_position_embeddings=512, pad_token_id=0)) == 512
    assert model_max_tokens(RobertaConfig(max_position_embeddings=514, pad_token_id=1)) == 512
    config, _ = _tiny_longformer(positions=256)
    assert model_max_tokens(config) == 256


def test_copy_global_projections_on_a_meta_model_and_a_trained_one():
    config, cls = _tiny_longformer()
    with torch.device("meta"):  # as convert builds it: the global projections have no storage
        model = cls(config)
    state = {k: torch.randn(v.shape) for k, v in model.state_dict().items() if "_global" not in k}
    model.load_state_dict(state, strict=False, assign=True)
    assert copy_global_projections(model) == 2
    assert not any(p.is_meta for p in model.parameters())
    for layer in model.longformer.encoder.layer:
        attn = layer.attention.self
        for p in ("query", "key", "value"):
            for part in ("weight", "bias"):
                local, glob = getattr(getattr(attn, p), part), getattr(getattr(attn, f"{p}_global"), part)
                assert torch.equal(local, glob) and local.data_ptr() != glob.data_ptr()
                assert glob.requires_grad

    # Trained local projections: copied again, and the copies are independent of later changes.
    attn = model.longformer.encoder.layer[1].attention.self
    with torch.no_grad():
        attn.key.weight.add_(1.0)
    assert not torch.equal(attn.key.weight, attn.key_global.weight)
    assert copy_global_projections(model) == 2
    assert torch.equal(attn.key.weight, attn.key_global.weight)
    with torch.no_grad():
        attn.key.weight.add_(1.0)
    assert not torch.equal(attn.key.weight, attn.key_global.weight)


def test_copy_global_projections_leaves_other_models_alone():
    from transformers import BertConfig, BertModel

    model = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=32))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert copy_global_projections(model) == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("fast", [True, False])
def test_loaded_longformer_gets_the_guard_and_fast_attention_when_asked(fast, tmp_path):
    from longctx.testing import train_tokenizer

    config, cls = _tiny_longformer(positions=64)
    tokenizer = train_tokenizer("roberta", ["a few words to learn from"] * 10, vocab_size=300)
    config.vocab_size = len(tokenizer)
    cls(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model, _, has_head = load_mlm(str(tmp_path), fast_attention=fast)
    assert has_head and uses_fast_attention(model) is fast
    _, qa = load_qa_model(str(tmp_path), fast_attention=fast)
    assert uses_fast_attention(qa) is fast
    for m in (model, qa):
        with pytest.raises(LongctxError, match="input of 65 tokens is longer than the model's 64 positions"):
            m(input_ids=torch.full((1, 65), 5))


_KERNELS = """
import json, sys, torch
from torch.profiler import ProfilerActivity, profile
from longctx.models import load_qa_model
_, model = load_qa_model(sys.argv[1], attention_dropout=json.loads(sys.argv[2]), fast_attention=sys.argv[3] == "1")
model.train()
ids = torch.full((2, 24), 5)
mask = torch.ones_like(ids)
mask[1, 16:] = 0
extra = {}
if model.config.model_type == "longformer":  # a question of 3 tokens, attended globally
    extra["global_attention_mask"] = torch.zeros_like(ids)
    extra["global_attention_mask"][:, :3] = 1
with profile(activities=[ProfilerActivity.CPU]) as prof:
    model(input_ids=ids, attention_mask=mask, **extra).start_logits.sum().backward()
print(json.dumps({"dropout": model.config.attention_probs_dropout_prob,
                  "kernels": sorted({e.key for e in prof.key_averages()
                                     if ("scaled_dot_product" in e.key and "backward" not in e.key)
                                     or e.key == "aten::_softmax"})}))
"""


def _attention_kernels(model_dir, attention_dropout: float | None, fast: bool = True) -> tuple[float, set[str]]:
    """(the loaded model's attention dropout, the SDPA kernels and explicit softmaxes of one training forward and
    backward on a padded batch of two; `fast`: load_qa_model's fast_attention). In a child process: the profiler left state behind that changed a later in-process training
    run of this suite (tests/test_torchrun.py's single-process losses)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _KERNELS, str(model_dir), json.dumps(attention_dropout),
                           "1" if fast else "0"],
                          capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["dropout"], set(result["kernels"])


def test_attention_never_takes_sdpas_math_path_and_is_fused_without_dropout(tiny_encoder_dir, tmp_path):
    # PyTorch's fused (flash) attention has no dropout on CPU: with the 0.1 of BERT-family configs, transformers'
    # own path (the reference pipeline's load) runs SDPA's math kernel; longctx's (longctx.fastcpu) computes the
    # probabilities itself with a cheap dropout mask; with --attention-dropout 0 both run the fused kernel.
    from longctx.testing import train_tokenizer

    def on_math(kernels):
        return any("math" in k for k in kernels)

    def fused(kernels):
        return any("flash" in k for k in kernels) and not on_math(kernels)

    bert = str(tiny_encoder_dir("bert", max_positions=128))
    dropout, kernels = _attention_kernels(bert, None, fast=False)  # None: the model's own setting
    assert dropout == 0.1 and on_math(kernels), kernels
    dropout, kernels = _attention_kernels(bert, None)
    assert dropout == 0.1 and not on_math(kernels) and "aten::_softmax" in kernels, kernels
    dropout, kernels = _attention_kernels(bert, 0.0)
    assert dropout == 0.0 and fused(kernels) and "aten::_softmax" not in kernels, kernels

    config, _ = _tiny_longformer(positions=64)  # longctx's SDPA Longformer attention follows the same setting
    tokenizer = train_tokenizer("roberta", ["a few words to learn from"] * 10, vocab_size=300)
    config.vocab_size = len(tokenizer)
    from transformers import LongformerForQuestionAnswering

    LongformerForQuestionAnswering(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    _, long_own = load_qa_model(str(tmp_path))
    assert uses_fast_attention(long_own)
    kernels = _attention_kernels(tmp_path, None)[1]
    assert not on_math(kernels) and "aten::_softmax" in kernels, kernels
    kernels = _attention_kernels(tmp_path, 0.0)[1]
    assert fused(kernels) and "aten::_softmax" not in kernels, kernels
