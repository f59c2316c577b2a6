"""MLM continuation pretraining: learning, metrics, exact resume, the saved checkpoint, and user errors."""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from longctx.cli import main
from longctx.common import REPO_ROOT, LongctxError
from longctx.convert import to_long
from longctx.data.mlm import masked_eval_text
from longctx.pretrain import evaluate_mlm, mlm_loss, mlm_metrics, pretrain

FIXTURES = REPO_ROOT / "tests" / "fixtures"
TRAIN, VALID = str(FIXTURES / "wikitext_train.raw"), str(FIXTURES / "wikitext_valid.raw")
PROJECTIONS = ("query", "key", "value")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny models: thread synchronisation costs more than it saves, badly so on a busy 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def long_dir(tiny_encoder_dir, tmp_path_factory):
    """A tiny roberta (64 positions) converted to a 256-position Longformer."""
    src = tiny_encoder_dir("roberta", max_positions=64)
    out = tmp_path_factory.mktemp("pretrain-long") / "long"
    to_long(str(src), str(out), max_pos=256, attention_window=64)
    return out


def _small(**overrides):
    """A few seconds of CPU training on the fixture text."""
    kwargs = dict(train_file=[TRAIN], eval_file=VALID, learning_rate=1e-3, warmup_steps=2, max_steps=12,
                  per_device_train_batch_size=2, gradient_accumulation_steps=2, eval_steps=100, save_steps=6,
                  logging_steps=1, save_total_limit=None, precision="fp32")
    kwargs.update(overrides)
    return kwargs


def _layers(model):
    return [m for m in model.modules() if all(hasattr(m, p) and hasattr(m, p + "_global") for p in PROJECTIONS)]


def _bpc_consistent(m: dict) -> None:
    """Bits per character come from the very loss that gives bits per token."""
    assert m["bits_per_token"] == pytest.approx(m["loss"] / math.log(2), rel=1e-12)
    assert m["perplexity"] == pytest.approx(math.exp(m["loss"]), rel=1e-12)
    assert m["bits_per_character"] == pytest.approx(
        m["loss"] * m["tokens"] / m["characters"] / math.log(2), rel=1e-12)
    assert m["bits_per_character"] == pytest.approx(m["bits_per_token"] * m["tokens"] / m["characters"], rel=1e-12)


def test_mlm_metrics_definitions():
    m = mlm_metrics(loss_sum=300.0, masked_tokens=100, text_tokens=1000, characters=4000)
    assert m["loss"] == 3.0
    assert m["bits_per_token"] == pytest.approx(3.0 / math.log(2))
    # 1000 tokens x 3 nats = 3000 nats over 4000 characters.
    assert m["bits_per_character"] == pytest.approx(3000 / 4000 / math.log(2))
    _bpc_consistent(m)


def test_gradient_accumulation_loss_is_the_token_mean():
    logits = torch.randn(2, 5, 11)
    labels = torch.full((2, 5), -100)
    labels[0, 1], labels[0, 3], labels[1, 2] = 4, 7, 9
    full = torch.nn.functional.cross_entropy(logits[labels != -100], labels[labels != -100])
    # Two micro-batches of one row each: their losses add up to the mean over all 3 masked tokens.
    parts = [mlm_loss({"logits": logits[i:i + 1]}, labels[i:i + 1], num_items_in_batch=torch.tensor(3))
             for i in range(2)]
    assert float(sum(parts)) == pytest.approx(float(full), rel=1e-6)
    assert float(mlm_loss({"logits": logits}, labels)) == pytest.approx(float(full), rel=1e-6)


@pytest.mark.shared
def test_learns_on_shared_wikitext(shared_file, long_dir, tmp_path):
    """A few dozen steps on real WikiText lower the evaluation loss; BPC is the same loss rescaled."""
    train = shared_file("wikitext-raw-valid-test/wiki.valid.raw")
    test = shared_file("wikitext-raw-valid-test/wiki.test.raw")
    m = pretrain(model=str(long_dir), out=str(tmp_path / "run"), train_file=[str(train)], eval_file=str(test),
                 max_eval_blocks=6, learning_rate=2e-3, warmup_steps=4, max_steps=40, per_device_train_batch_size=4,
                 gradient_accumulation_steps=1, eval_steps=20, save_steps=1000, logging_steps=10, precision="fp32")
    before, after = m["before"]["converted"], m["after"]["trained"]
    assert after["loss"] < before["loss"] - 0.5, (before["loss"], after["loss"])
    for result in (before, after, m["before"]["source"]):
        _bpc_consistent(result)
    # Same text, same masks: the source at 64 tokens, the converted and the trained model at 256.
    source = m["before"]["source"]
    assert source["block_size"] == 64 and before["block_size"] == after["block_size"] == 256
    for key in ("masked_tokens", "tokens", "characters"):
        assert source[key] == before[key] == after[key] == m["data"]["eval"][key]
    assert after["tokens"] == 6 * 254  # the text covered by 6 blocks of 256 (cls + 254 + sep)
    assert m["data"]["train"]["articles"] == 60 and m["data"]["train"]["characters"] == 1_144_748
    assert m["data"]["train"]["padding_waste"] < 1e-3
    evals = [h for h in m["log_history"] if "eval_loss" in h]
    assert [h["step"] for h in evals] == [20, 40]
    assert evals[-1]["eval_loss"] == pytest.approx(after["loss"])


def test_cli_run_saves_an_ordinary_longformer(long_dir, tmp_path):
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoModelForQuestionAnswering, AutoTokenizer

    out = tmp_path / "run"
    code = main(["pretrain", "--config", str(REPO_ROOT / "experiments/pretrain/tiny.yaml"), "--model", str(long_dir),
                 "--out", str(out), "--train-file", TRAIN, "--eval-file", VALID, "--max-steps", "10",
                 "--eval-steps", "5", "--save-steps", "5", "--logging-steps", "5"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "done" and metrics["train"]["global_step"] == 10
    # auto: whatever the policy decides on this machine (bf16 only where the CPU computes it natively), with its reason
    from longctx.precision import resolve_precision

    assert metrics["train"]["precision"] == resolve_precision("auto").name
    assert metrics["train"]["precision_reason"] == resolve_precision("auto").reason
    assert metrics["config"]["block_size"] == 256 and metrics["config"]["learning_rate"] == 1e-3
    assert "max_pos" not in metrics["config"]
    assert metrics["git_commit"] is None or len(metrics["git_commit"]) >= 40
    assert "torch" in metrics["versions"] and metrics["seed"] == 42
    assert set(metrics["before"]) == {"source", "converted"} and set(metrics["after"]) == {"trained"}
    assert metrics["before"]["converted"]["mlm_head"] == "loaded"
    for result in (*metrics["before"].values(), metrics["after"]["trained"]):
        _bpc_consistent(result)
    # The logged training loss is a per-token mean, not the sum over accumulated micro-batches.
    first = next(h for h in metrics["log_history"] if "loss" in h)
    assert first["loss"] < math.log(1000) + 1
    assert json.loads((out / "config.json").read_text())["block_size"] == 256
    assert json.loads((out / "run.json").read_text())["config"]["out"] == str(out)
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))

    model = AutoModelForMaskedLM.from_pretrained(out / "model")
    assert type(model).__name__ == "LongformerForMaskedLM"
    assert AutoTokenizer.from_pretrained(out / "model").model_max_length == 256
    assert AutoConfig.from_pretrained(out / "model").longctx["pretrained"]["global_projections"] == "recopied"
    layers = _layers(model)
    assert len(layers) == 2
    for layer in layers:
        for p in PROJECTIONS:
            assert torch.equal(getattr(layer, p).weight, getattr(layer, p + "_global").weight)
            assert torch.equal(getattr(layer, p).bias, getattr(layer, p + "_global").bias)
    converted = AutoModelForMaskedLM.from_pretrained(long_dir)
    assert not torch.equal(layers[0].query.weight, _layers(converted)[0].query.weight)  # it was trained
    qa = AutoModelForQuestionAnswering.from_pretrained(out / "model")  # what `longctx finetune` loads
    assert type(qa).__name__ == "LongformerForQuestionAnswering"


def test_resume_reaches_the_same_step_and_loss(long_dir, tmp_path):
    out = tmp_path / "run"
    kwargs = _small(model=str(long_dir), out=str(out), recopy_global=False, source_model="none")
    # 26 blocks, 2 x 2 per step: 7 steps per epoch, so the run crosses an epoch after the step-6 checkpoint.
    full = pretrain(**kwargs)
    assert full["data"]["train"]["blocks"] == 26
    assert set(full["before"]) == {"converted"}  # source_model none: no comparison
    # A run killed after its step-6 checkpoint: only that checkpoint (and the before-metrics) remain.
    shutil.rmtree(out / "checkpoints" / "checkpoint-12")
    shutil.rmtree(out / "model")
    # A run from before block_size was renamed stored it as max_pos: still a field that must not change.
    stored = json.loads((out / "config.json").read_text())
    stored["max_pos"] = stored.pop("block_size")
    (out / "config.json").write_text(json.dumps({**stored, "max_pos": 128}))
    with pytest.raises(LongctxError, match="cannot resume with a different block_size"):
        pretrain(**kwargs, resume=True)
    (out / "config.json").write_text(json.dumps(stored))
    resumed = pretrain(**kwargs, resume=True)
    assert resumed["train"]["resumed_from"].endswith("checkpoint-6")
    assert resumed["train"]["global_step"] == full["train"]["global_step"] == 12
    assert resumed["after"]["trained"]["loss"] == pytest.approx(full["after"]["trained"]["loss"], abs=1e-5)
    losses = [{h["step"]: h["loss"] for h in r["log_history"] if "loss" in h} for r in (full, resumed)]
    assert sorted(losses[0]) == sorted(losses[1]) == list(range(1, 13))
    for step in range(7, 13):
        assert losses[1][step] == pytest.approx(losses[0][step], abs=1e-5)

    # --no-recopy-global: the saved global projections are still the converted model's.
    from transformers import AutoModelForMaskedLM

    saved, converted = (_layers(AutoModelForMaskedLM.from_pretrained(p)) for p in (out / "model", long_dir))
    assert torch.equal(saved[0].query_global.weight, converted[0].query_global.weight)
    assert not torch.equal(saved[0].query.weight, saved[0].query_global.weight)

    # Resuming with a setting that changes the data or masks is refused; a finished run refuses a restart.
    with pytest.raises(LongctxError, match="cannot resume with a different seed"):
        pretrain(**kwargs, resume=True, seed=7)
    with pytest.raises(LongctxError, match="pass --resume to continue it or --force"):
        pretrain(**kwargs)


def test_user_errors(long_dir, tiny_encoder_dir, tmp_path, warnings):
    base = _small(model=str(long_dir), out=str(tmp_path / "run"))
    with pytest.raises(LongctxError, match=r"nope\.raw: WikiText file not found"):
        pretrain(**{**base, "train_file": [str(tmp_path / "nope.raw")]})
    with pytest.raises(LongctxError, match="no training text"):
        pretrain(**{**base, "train_file": None})
    with pytest.raises(LongctxError, match="mlm_probability"):
        pretrain(**base, mlm_probability=1.5)
    with pytest.raises(LongctxError, match="nothing to resume"):
        pretrain(**{**base, "out": str(tmp_path / "fresh")}, resume=True)
    with pytest.raises(LongctxError, match="block_size 512 is more than the model's 256 positions"):
        pretrain(**base, block_size=512, force=True)
    with pytest.raises(LongctxError, match="'block_size' \\(128\\) and 'max_pos' \\(256\\) disagree"):
        pretrain(**base, block_size=128, max_pos=256, force=True)
    # max_pos, block_size's old name, still works for one release, with a one-line warning.
    with pytest.raises(LongctxError, match="block_size 512 is more than the model's 256 positions"):
        pretrain(**base, max_pos=512, force=True)
    assert [r.getMessage() for r in warnings.records if "max_pos" in r.getMessage()] == [
        "field 'max_pos' of pretrain is deprecated: it is now 'block_size' (tokens per block)"]
    with pytest.raises(LongctxError, match=r"missing-model: model not found"):
        pretrain(**{**base, "model": str(tmp_path / "missing-model")}, force=True)
    if not torch.cuda.is_available():
        with pytest.raises(LongctxError, match="fp16 needs a CUDA GPU"):
            pretrain(**{**base, "precision": "fp16"}, force=True)
    bare = tmp_path / "bare-long"
    to_long(str(tiny_encoder_dir("roberta", mlm_head=False, max_positions=64)), str(bare), max_pos=256,
            attention_window=64)
    with pytest.raises(LongctxError, match="has no MLM head .*; --mlm-head auto starts a fresh head"):
        pretrain(**{**base, "model": str(bare)}, mlm_head="require", force=True)
    with pytest.raises(LongctxError, match="pass --source-model PATH, or --source-model none"):
        pretrain(**base, source_model=str(tmp_path / "gone"), force=True)
    # The CLI prints such mistakes as one line and exits 2.
    assert main(["pretrain", "--model", str(long_dir), "--out", str(tmp_path / "cli"),
                 "--train-file", str(tmp_path / "nope.raw"), "--eval-file", VALID]) == 2


def test_without_fast_attention_module(long_dir, monkeypatch):
    import sys

    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from longctx.data import wikitext
    from longctx.models import enable_fast_attention

    monkeypatch.setitem(sys.modules, "longctx.attention", None)  # as if attention.py did not exist
    model = AutoModelForMaskedLM.from_pretrained(long_dir)
    assert enable_fast_attention(model) is False
    tokenizer = AutoTokenizer.from_pretrained(long_dir)
    tokens = wikitext.tokenize_articles(wikitext.load_articles([VALID])[0], tokenizer)
    text = masked_eval_text(tokens, tokenizer, block_size=256, packing="concat", mlm_probability=0.15)
    plain = evaluate_mlm(model, text, 256, tokenizer)
    _bpc_consistent(plain)
    monkeypatch.delitem(sys.modules, "longctx.attention")
    try:
        import longctx.attention  # noqa: F401
    except ImportError:
        return
    assert enable_fast_attention(model) is True
    fast = evaluate_mlm(model, text, 256, tokenizer)
    assert fast["loss"] == pytest.approx(plain["loss"], abs=1e-4)


def test_help_lists_every_field(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["pretrain", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--train-file", "--block-size", "--gradient-checkpointing", "--no-recopy-global", "--resume",
                 "--max-eval-blocks", "--source-model", "--mlm-head"):
        assert flag in text


def test_gradient_checkpointing_trains_the_same(long_dir, tmp_path, monkeypatch):
    import transformers

    calls = []
    original = transformers.PreTrainedModel.activation_checkpointing_enable

    def spy(self, *args, **kwargs):
        calls.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(transformers.PreTrainedModel, "activation_checkpointing_enable", spy)
    runs = [pretrain(**_small(model=str(long_dir), out=str(tmp_path / f"gc-{gc}"), max_steps=3, save_steps=100,
                              source_model="none", gradient_checkpointing=gc))
            for gc in (False, True)]
    assert len(calls) == 1  # only the second run recomputes activations
    assert runs[1]["after"]["trained"]["loss"] == pytest.approx(runs[0]["after"]["trained"]["loss"], abs=1e-5)


# ------------------------------------------------------------------------ encoders without an MLM head


def _head_params(model):
    prefix = "cls." if hasattr(model, "cls") else "lm_head."
    return {n: p for n, p in model.named_parameters(remove_duplicate=False) if n.startswith(prefix)}


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_new_head_is_tied_and_initialised_as_the_family_does(family, tiny_encoder_dir, tmp_path):
    from longctx.models import load_mlm

    bare = tiny_encoder_dir(family, mlm_head=False, max_positions=64)
    long = tmp_path / "long"
    to_long(str(bare), str(long), max_pos=128, attention_window=32)  # a LongformerModel: no lm_head
    for folder in (bare, long):
        with pytest.raises(LongctxError, match="has no MLM head"):
            load_mlm(str(folder))
        torch.manual_seed(0)
        model, _, has_head = load_mlm(str(folder), new_head=True)
        assert not has_head
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
        params = _head_params(model)
        assert params and all(torch.isfinite(p).all() for p in params.values())  # transformers left NaN bias
        for name, p in params.items():
            if name.endswith("decoder.weight"):
                continue
            if name.lower().replace("_", "").endswith("layernorm.weight"):
                assert torch.equal(p, torch.ones_like(p)), name
            elif name.endswith("dense.weight"):
                assert 0.01 < p.std().item() < 0.03, name  # normal(0, initializer_range=0.02)
            else:
                assert torch.equal(p, torch.zeros_like(p)), name  # every bias
        ids = torch.tensor([[2, 10, 11, 12, 3]])
        assert torch.isfinite(model(input_ids=ids).logits).all()


def test_pretrain_starts_a_fresh_head_and_says_so(tiny_encoder_dir, tmp_path, warnings):
    """A bare encoder converted to a LongformerModel (what `convert` writes for MiniLM): pretrain starts a
    fresh head with a one-line notice, records it in metrics.json and the saved config, and learns."""
    from transformers import AutoConfig, AutoModelForMaskedLM

    bare = tmp_path / "bare-long"
    to_long(str(tiny_encoder_dir("roberta", mlm_head=False, max_positions=64)), str(bare), max_pos=256,
            attention_window=64)
    out = tmp_path / "run"
    m = pretrain(**_small(model=str(bare), out=str(out), max_steps=20, learning_rate=3e-3))
    # One record (deduplicated: it reaches caplog twice while the logger still propagates), one line.
    notices = list({id(r): r.getMessage() for r in warnings.records if "no MLM head" in r.getMessage()}.values())
    assert notices == [(f"{bare} has no MLM head: starting a fresh one (decoder tied to the input embeddings); "
                        f"the 'before' loss is an untrained head's, not the source's MLM quality")]
    before, after = m["before"]["converted"], m["after"]["trained"]
    assert before["mlm_head"] == "new" and "untrained head" in before["note"]
    assert "source" not in m["before"]  # a fresh head's loss is not comparable with any source
    assert after["loss"] < before["loss"] - 0.5, (before["loss"], after["loss"])
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["before"]["converted"]["mlm_head"] == "new"
    assert AutoConfig.from_pretrained(out / "model").longctx["pretrained"]["mlm_head"] == "new"
    model, info = AutoModelForMaskedLM.from_pretrained(out / "model", output_loading_info=True)
    assert not info["missing_keys"]  # the trained head was saved with the model
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


@pytest.mark.slow
def test_real_minilm_without_head_converts_and_learns(minilm_dir, tmp_path):
    """MiniLM (a sentence encoder, no MLM head): convert -> pretrain a few steps, the loss falls."""
    long = tmp_path / "minilm-long"
    assert main(["convert", "--model", str(minilm_dir), "--out", str(long), "--max-pos", "1024",
                 "--attention-window", "128"]) == 0
    out = tmp_path / "run"
    m = pretrain(model=str(long), out=str(out), train_file=[TRAIN], eval_file=VALID, block_size=256,
                 max_eval_blocks=4, learning_rate=5e-4, warmup_steps=2, max_steps=12, per_device_train_batch_size=2,
                 gradient_accumulation_steps=1, eval_steps=100, save_steps=100, logging_steps=4, precision="fp32")
    before, after = m["before"]["converted"], m["after"]["trained"]
    assert before["mlm_head"] == "new" and "source" not in m["before"]
    assert after["loss"] < before["loss"] - 1.0, (before["loss"], after["loss"])


def test_bad_text_fails_before_the_model_and_leaves_no_folder(long_dir, tmp_path, monkeypatch):
    import longctx.pretrain as pt

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the text was read")

    monkeypatch.setattr(pt, "load_mlm", no_model)
    empty = tmp_path / "empty.raw"
    empty.write_text("  \n")
    out = tmp_path / "run"
    with pytest.raises(LongctxError, match=r"empty\.raw: no text"):
        pretrain(**_small(model=str(long_dir), out=str(out), train_file=[str(empty)]))
    with pytest.raises(LongctxError, match=r"is a folder, expected a WikiText raw text file"):
        pretrain(**_small(model=str(long_dir), out=str(out), eval_file=str(tmp_path)))
    assert not out.exists()
