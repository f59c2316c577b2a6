"""Abstractive QA with T5 (longctx.seq2seq): offline, on a tiny T5 and generated QA sets."""
from __future__ import annotations

import json

import pytest

from longctx.common import LongctxError, REPO_ROOT
from longctx.seq2seq import UNANSWERABLE, finetune_seq2seq, optimizer_args, source_text, target_text, to_prediction
from longctx.testing import synthetic_qa, tiny_t5

RECIPES = sorted((REPO_ROOT / "experiments" / "t5").glob("*.yaml"))


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: a second intra-op thread mostly waits for the first
    (spin-waiting under load made steps ~10x slower), so these tests run single-threaded."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def qa_set(tmp_path_factory):
    """Generated SQuAD 2.0 train/eval files (20% unanswerable) and a tiny T5 whose tokenizer saw them.

    One fact per context ("Ada was born in Paris."): the answer must be copied from the context, and a
    question about an unstated relation ("Where does Ada work?") is unanswerable. (With two facts a
    2-layer d_model-64 T5 learns the unanswerable case but stays at chance choosing between the two
    cities for well over 1,000 steps, too long for this suite.)"""
    from longctx.data.squad import write_squad

    root = tmp_path_factory.mktemp("seq2seq")
    train = synthetic_qa(3000, facts=1, unanswerable=0.2, seed=1, id_prefix="train")
    evals = synthetic_qa(100, facts=1, unanswerable=0.2, seed=2, id_prefix="eval")
    write_squad(train, root / "train.json", version="2.0")
    write_squad(evals, root / "eval.json", version="2.0")
    model = tiny_t5(root / "tiny-t5", texts=[f"{source_text(e['question'], e['context'])} {target_text(e)}"
                                             for e in train[:500]])
    return {"root": root, "train": root / "train.json", "eval": root / "eval.json", "model": model,
            "eval_examples": evals}


def test_synthetic_qa_records():
    examples = synthetic_qa(200, facts=2, unanswerable=0.3, seed=5)
    assert len({e["id"] for e in examples}) == 200
    impossible = [e for e in examples if e["is_impossible"]]
    assert 30 <= len(impossible) <= 90
    for e in examples:
        if e["is_impossible"]:
            assert e["answers"] == {"text": [], "answer_start": []}
            assert target_text(e) == UNANSWERABLE
        else:
            (text,), (start,) = e["answers"]["text"], e["answers"]["answer_start"]
            assert e["context"][start:start + len(text)] == text
            assert target_text(e) == text
    assert synthetic_qa(5, seed=5) == synthetic_qa(5, seed=5)
    with pytest.raises(ValueError):
        synthetic_qa(1, facts=3, unanswerable=0.5)  # no relation left unstated for the unanswerable ones


def test_tiny_t5_follows_t5_conventions(qa_set):
    from transformers import AutoConfig, AutoTokenizer, T5Tokenizer

    tok = AutoTokenizer.from_pretrained(qa_set["model"])
    assert isinstance(tok, T5Tokenizer)
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok.convert_ids_to_tokens(0) == "<pad>" and "<extra_id_0>" in tok.get_vocab()
    text = "question: Where was Ada born? context: Ada was born in Paris."
    ids = tok(text).input_ids
    assert ids[-1] == tok.eos_token_id and tok.unk_token_id not in ids
    assert tok.convert_ids_to_tokens(ids)[0].startswith("▁")  # SentencePiece-style Metaspace pieces
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.decode(tok(text_target=UNANSWERABLE).input_ids, skip_special_tokens=True) == UNANSWERABLE
    config = AutoConfig.from_pretrained(qa_set["model"])
    assert config.model_type == "t5" and config.d_model == 64 and config.num_layers == 2
    assert config.decoder_start_token_id == 0 and config.vocab_size == len(tok)


def test_adafactor_uses_t5_paper_settings(tmp_path):
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments
    from transformers.optimization import Adafactor

    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path), learning_rate=1e-3, report_to="none",
                                    **optimizer_args("adafactor"))
    cls, kwargs = Seq2SeqTrainer.get_optimizer_cls_and_kwargs(args)
    assert cls is Adafactor
    assert kwargs["lr"] == 1e-3 and kwargs["scale_parameter"] is False and kwargs["relative_step"] is False
    assert kwargs.get("warmup_init", False) is False
    assert args.lr_scheduler_type == "constant"
    assert optimizer_args("adamw")["optim"] == "adamw_torch"


def test_unanswerable_generations_are_scored_as_squad2(tmp_path, capsys):
    """Generated `unanswerable` -> "" (the official no-answer); HasAns/NoAns figures computed by hand."""
    from longctx.common import write_json
    from longctx.data.squad import write_squad
    from longctx.qa.metrics import score, squad_v2

    ctx = "Ada was born in Paris. Boris lives in New York City. Clara works in Rome."

    def rec(qid, question, answer=None):
        answers = {"text": [answer], "answer_start": [ctx.index(answer)]} if answer else {"text": [],
                                                                                          "answer_start": []}
        return {"id": qid, "title": "t", "context": ctx, "question": question, "answers": answers,
                "is_impossible": answer is None}

    examples = [rec("q1", "Where was Ada born?", "Paris"), rec("q2", "Where does Boris live?", "New York City"),
                rec("q3", "Where does Clara work?", "Rome"), rec("q4", "Where was Boris born?"),
                rec("q5", "Where does Ada work?"), rec("q6", "Where does Clara live?")]
    generations = {"q1": "Paris", "q2": "New York", "q3": "unanswerable", "q4": "unanswerable",
                   "q5": " Unanswerable. ", "q6": "Berlin"}
    predictions = {qid: to_prediction(text) for qid, text in generations.items()}
    assert predictions == {"q1": "Paris", "q2": "New York", "q3": "", "q4": "", "q5": "", "q6": "Berlin"}
    # per question (EM, F1): q1 (1, 1); q2 (0, 0.8: P=2/2, R=2/3); q3 (0, 0); q4 (1, 1); q5 (1, 1); q6 (0, 0)
    expected = {"exact": 100 * 3 / 6, "f1": 100 * 3.8 / 6, "total": 6,
                "HasAns_exact": 100 / 3, "HasAns_f1": 100 * 1.8 / 3, "HasAns_total": 3,
                "NoAns_exact": 100 * 2 / 3, "NoAns_f1": 100 * 2 / 3, "NoAns_total": 3}
    got = dict(squad_v2(examples, predictions))
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key
    # the same numbers through `longctx score` on files, as a seq2seq run writes them
    write_squad(examples, tmp_path / "gold.json", version="2.0")
    write_json(tmp_path / "predictions.json", predictions)
    scored = dict(score(data=str(tmp_path / "gold.json"), predictions=str(tmp_path / "predictions.json")))
    capsys.readouterr()
    assert scored == pytest.approx(got)


def test_evaluate_only_counts_truncated_contexts(qa_set, tmp_path):
    out = tmp_path / "run"
    metrics = finetune_seq2seq(model=str(qa_set["model"]), out=str(out), eval_file=str(qa_set["eval"]),
                               max_eval_samples=8, max_source_length=12, num_beams=2, generation_max_length=4,
                               precision="fp32")
    assert metrics["task"] == "seq2seq" and metrics["truncated_contexts"] == 8
    assert metrics["eval"]["truncated_contexts"] == 8 and metrics["eval"]["total"] == 8  # squad_v2 figures
    predictions = json.loads((out / "predictions.json").read_text())
    assert len(predictions) == 8 and all(isinstance(v, str) for v in predictions.values())
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["eval"]["exact"] == metrics["eval"]["exact"]
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["max_source_length"] == 12 and run["config"]["task"] == "seq2seq"
    assert run["precision"]["name"] == "fp32" and run["seed"] == 42 and "versions" in run
    assert "train" not in metrics and not (out / "model").exists()
    # long enough: nothing is cut
    again = finetune_seq2seq(model=str(qa_set["model"]), out=str(out), eval_file=str(qa_set["eval"]),
                             max_eval_samples=8, num_beams=1, generation_max_length=4, precision="fp32", force=True)
    assert again["truncated_contexts"] == 0


def test_learns_generated_qa(qa_set, tmp_path):
    """Loss falls and exact match rises far above the untrained model, unanswerable questions included."""
    common = dict(model=str(qa_set["model"]), eval_file=str(qa_set["eval"]), num_beams=1, precision="fp32")
    before = finetune_seq2seq(out=str(tmp_path / "before"), **common)["eval"]
    after_all = finetune_seq2seq(out=str(tmp_path / "after"), train_file=str(qa_set["train"]), max_steps=300,
                                 per_device_train_batch_size=16, logging_steps=50, **common)
    after, train = after_all["eval"], after_all["train"]
    # Adafactor at the T5 recipe's constant 1e-3; the loss falls several-fold
    assert train["optimizer"] == "adafactor" and train["last_loss"] < train["first_loss"] / 3
    # untrained: no answer is right (empty output counts as "no answer", so NoAns may score)
    assert before["HasAns_exact"] <= 5
    assert after["exact"] >= before["exact"] + 50
    assert after["HasAns_exact"] >= 80  # copies the place from the context
    assert after["NoAns_exact"] >= 80  # learned to say "unanswerable" when the asked relation is not stated
    out = tmp_path / "after"
    generations = json.loads((out / "generations.json").read_text())
    predictions = json.loads((out / "predictions.json").read_text())
    assert UNANSWERABLE in generations.values()
    assert {qid for qid, t in generations.items() if t == UNANSWERABLE} == {q for q, p in predictions.items() if not p}
    assert (out / "model" / "config.json").is_file() and any((out / "tensorboard").iterdir())
    assert any((out / "checkpoints").glob("checkpoint-*"))


def test_resume_continues_from_checkpoint(qa_set, tmp_path):
    out = tmp_path / "run"
    common = dict(model=str(qa_set["model"]), out=str(out), train_file=str(qa_set["train"]), max_train_samples=64,
                  per_device_train_batch_size=8, save_steps=4, logging_steps=2, precision="fp32", save_model=False)
    finetune_seq2seq(max_steps=4, **common)
    with pytest.raises(LongctxError, match="not empty"):
        finetune_seq2seq(max_steps=4, **common)
    # mark the checkpoint's history: a resumed run carries it on, a fresh run would log step 2 anew
    state_file = out / "checkpoints" / "checkpoint-4" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["log_history"][0]["loss"] = 999.0
    state_file.write_text(json.dumps(state))
    finetune_seq2seq(max_steps=8, resume=True, **common)
    losses = {h["step"]: h["loss"] for h in json.loads((out / "log_history.json").read_text()) if "loss" in h}
    assert sorted(losses) == [2, 4, 6, 8] and losses[2] == 999.0  # steps 1-4 came from checkpoint-4
    assert sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]
    with pytest.raises(LongctxError, match="no checkpoint"):
        finetune_seq2seq(max_steps=8, resume=True, **{**common, "out": str(tmp_path / "empty")})


def test_errors_are_one_line(qa_set, tmp_path):
    with pytest.raises(LongctxError, match="train_file and/or eval_file"):
        finetune_seq2seq(model=str(qa_set["model"]), out=str(tmp_path / "a"))
    with pytest.raises(LongctxError, match="encoder-decoder"):
        finetune_seq2seq(model=str(tmp_path / "missing-model"), out=str(tmp_path / "b"),
                         eval_file=str(qa_set["eval"]))


def test_cli_routes_task_seq2seq(qa_set, tmp_path, capsys):
    from longctx.cli import main

    out = tmp_path / "cli"
    rc = main(["finetune", "--task", "seq2seq", "--model", str(qa_set["model"]), "--eval-file", str(qa_set["eval"]),
               "--out", str(out), "--max-eval-samples", "4", "--num-beams", "1", "--generation-max-length", "4",
               "--precision", "fp32"])
    assert rc == 0, capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text())["task"] == "seq2seq"


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_recipes_bind(recipe):
    from longctx.config import bind, load_recipe
    from longctx.finetune import finetune

    values = load_recipe(recipe)
    assert values["task"] == "seq2seq" and finetune.route(values) is finetune_seq2seq
    bound = bind(finetune_seq2seq, values, source=str(recipe))
    assert bound["model"] == "t5-small" and bound["optimizer"] == "adafactor" and bound["learning_rate"] == 1e-3


def test_recipes_exist():
    assert {p.name for p in RECIPES} >= {"t5-small-squad.yaml", "t5-small-squad2.yaml"}
