"""Abstractive QA: fine-tune an encoder-decoder (T5) to generate the answer, scored like extractive runs.

The text-to-text recipe of the T5 paper: the input is `question: {question} context: {context}`, the
target is the first gold answer, or the word `unanswerable` for SQuAD 2.0 questions without one.
Generated `unanswerable` becomes the empty string in predictions.json (the official "no answer"), so
`longctx score` and `longctx report` treat these runs exactly like extractive ones.

Contexts longer than `max_source_length` tokens are cut (the answer may be lost); how many were cut is
logged and recorded in metrics.json. T5 has relative position buckets, not a position table, so a
larger `max_source_length` than the checkpoint's 512 runs, at quadratic attention cost.

Offline stand-ins for tests (a tiny T5, generated QA sets) are in `longctx.testing`.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Literal

from longctx.checkpoints import Checkpoint, resume_checkpoint, resume_record, staged_folder
from longctx.common import (LongctxError, log, prepare_output_dir, read_json, run_metadata,
                            tensorboard_callback, write_json)
from longctx.config import resolved_config
from longctx.models import load_seq2seq
from longctx.precision import resolve_precision

UNANSWERABLE = "unanswerable"
Precision = Literal["auto", "fp32", "fp16", "bf16"]


def source_text(question: str, context: str) -> str:
    """The T5 paper's SQuAD input format."""
    return f"question: {question.strip()} context: {context.strip()}"


def target_text(example: dict) -> str:
    """First gold answer, or `unanswerable` when there is none (SQuAD 2.0 impossible questions)."""
    texts = example["answers"]["text"]
    return texts[0] if texts and not example.get("is_impossible") else UNANSWERABLE


def to_prediction(generated: str) -> str:
    """A generated answer as an official-format prediction: `unanswerable` -> "" (no answer)."""
    text = generated.strip()
    return "" if text.rstrip(".").strip().lower() == UNANSWERABLE else text


def _encode(examples: list[dict], tokenizer, max_source_length: int, max_target_length: int, what: str):
    """Tokenized dataset (input_ids, attention_mask, labels) plus counts of cut inputs and targets."""
    from datasets import Dataset

    def encode(batch: dict[str, list]) -> dict[str, list]:
        sources = [source_text(q, c) for q, c in zip(batch["question"], batch["context"])]
        enc = tokenizer(sources, truncation=True, max_length=max_source_length)
        labels = tokenizer(text_target=batch["target"], truncation=True, max_length=max_target_length)
        enc["labels"] = labels["input_ids"]
        enc["source_cut"] = _was_cut(enc, tokenizer, sources, max_source_length)
        enc["target_cut"] = _was_cut(labels, tokenizer, batch["target"], max_target_length)
        return enc

    raw = Dataset.from_dict({"question": [e["question"] for e in examples],
                             "context": [e["context"] for e in examples],
                             "target": [target_text(e) for e in examples]})
    data = raw.map(encode, batched=True, remove_columns=raw.column_names, desc=f"{what} inputs")
    cut_sources, cut_targets = sum(data["source_cut"]), sum(data["target_cut"])
    if cut_sources:
        log.warning("%s: %d of %d inputs are longer than max_source_length=%d tokens and were truncated "
                    "(their answers may be cut off)", what, cut_sources, len(data), max_source_length)
    if cut_targets:
        log.warning("%s: %d of %d target answers are longer than max_target_length=%d tokens and were truncated",
                    what, cut_targets, len(data), max_target_length)
    return data.remove_columns(["source_cut", "target_cut"]), cut_sources, cut_targets


def _was_cut(enc, tokenizer, texts: list[str], max_length: int) -> list[bool]:
    """Whether truncation removed tokens. Fast tokenizers keep the removed part in `overflowing`, so
    one tokenization pass suffices; other tokenizers are asked again without truncation."""
    encodings = getattr(enc, "encodings", None)
    if encodings:
        return [bool(e.overflowing) for e in encodings]
    full = tokenizer(texts, truncation=False)["input_ids"]
    return [len(ids) > max_length for ids in full]


def optimizer_args(optimizer: str, warmup_steps: float = 0) -> dict[str, str]:
    """TrainingArguments fields for the optimizer and its schedule.

    optim="adafactor" makes the Trainer build transformers' Adafactor with lr=learning_rate,
    scale_parameter=False and relative_step=False (warmup_init keeps its default, False): the T5
    fine-tuning settings, so no hand-made optimizer is needed. The constant schedule keeps the paper's
    fixed learning rate. AdamW gets the usual linear decay."""
    if optimizer == "adafactor":
        return {"optim": "adafactor", "lr_scheduler_type": "constant_with_warmup" if warmup_steps else "constant"}
    if optimizer == "adamw":
        return {"optim": "adamw_torch", "lr_scheduler_type": "linear"}
    raise LongctxError(f"field 'optimizer': must be adafactor or adamw, got {optimizer!r}")


def _generate(trainer, tokenizer, data, *, num_beams: int, max_length: int) -> tuple[list[str], dict[str, float]]:
    import numpy as np

    output = trainer.predict(data, num_beams=num_beams, max_length=max_length, metric_key_prefix="eval")
    ids = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    # Batches are concatenated with -100 padding; decode that as padding.
    ids = np.where(ids < 0, tokenizer.pad_token_id, ids)
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)
    stats = {k: v for k, v in (output.metrics or {}).items() if isinstance(v, (int, float))}
    return [t.strip() for t in texts], stats


def _score(examples: list[dict], predictions: dict[str, str], version_2: bool) -> dict[str, Any]:
    from longctx.qa.metrics import compute_metrics

    return compute_metrics(predictions, examples=examples, version="2.0" if version_2 else "1.1")


def _check_resume(out_dir: Path, config: dict[str, Any]) -> Checkpoint:
    """The checkpoint to resume from (the newest complete one), warning about changed fields."""
    checkpoint = resume_checkpoint(out_dir / "checkpoints", out_dir)
    previous = (read_json(out_dir / "run.json", "run.json").get("config") or {}) \
        if (out_dir / "run.json").is_file() else {}
    ignore = {"resume", "force", "precision_resolved"}
    changed = sorted(k for k in config if k not in ignore and k in previous and previous[k] != config[k])
    if changed:
        log.warning("%s: resuming with changed field(s) %s (was: %s)", out_dir, ", ".join(changed),
                    ", ".join(f"{k}={previous[k]!r}" for k in changed))
    return checkpoint


def check_values(fields: dict[str, Any]) -> None:
    """The checks finetune_seq2seq runs before any work (`fields`: its bound fields; absent ones take their
    defaults). Public because a sweep runs them on every cell when it plans."""
    if not fields.get("train_file") and not fields.get("eval_file"):
        raise LongctxError("nothing to do: give train_file and/or eval_file")
    for name in ("max_source_length", "max_target_length", "num_beams", "generation_max_length",
                 "per_device_train_batch_size", "per_device_eval_batch_size"):
        if name in fields and fields[name] < 1:
            raise LongctxError(f"field '{name}': must be at least 1, got {fields[name]}")
    if fields.get("resume") and not fields.get("train_file"):
        raise LongctxError("resume needs a train_file (there is no training to continue)")


def finetune_seq2seq(*, model: str, out: str, train_file: str | None = None, eval_file: str | None = None,
                     task: Literal["seq2seq"] = "seq2seq", max_source_length: int = 512,
                     max_target_length: int = 32, optimizer: Literal["adafactor", "adamw"] = "adafactor",
                     learning_rate: float = 1e-3, num_train_epochs: float = 3, max_steps: int = -1,
                     per_device_train_batch_size: int = 8, per_device_eval_batch_size: int = 16,
                     gradient_accumulation_steps: int = 1, warmup_steps: float = 0, weight_decay: float = 0.0,
                     num_beams: int = 4, generation_max_length: int = 32, precision: Precision = "auto",
                     logging_steps: int = 50, save_steps: int = 1000, save_model: bool = True, seed: int = 42,
                     max_train_samples: int | None = None, max_eval_samples: int | None = None,
                     resume: bool = False, force: bool = False) -> dict[str, Any]:
    """Fine-tune an encoder-decoder (T5) for abstractive QA, generate answers, and score them like SQuAD.

    Args:
        model: encoder-decoder folder or hub name (t5-small, google/t5-v1_1-base, a tiny_t5 folder...).
        out: run folder: metrics.json, predictions.json, generations.json, run.json, log_history.json,
            tensorboard/, checkpoints/, model/.
        train_file: SQuAD-format JSON (or dataset name, train split) to train on; omit to only evaluate.
        eval_file: SQuAD-format JSON (or dataset name, validation split); its version (1.1/2.0) picks the metrics.
        task: seq2seq (the field `longctx finetune` uses to choose this recipe).
        max_source_length: tokens of `question: ... context: ...`; longer inputs are truncated and counted.
        max_target_length: tokens of the target answer in training.
        optimizer: adafactor (T5 paper: constant lr 1e-3, no parameter scaling, no relative steps) or adamw
            (linear decay).
        learning_rate: learning rate (adafactor: constant; adamw: peak, e.g. 3e-4).
        num_train_epochs: epochs over the training questions.
        max_steps: stop after this many optimizer steps (overrides epochs when > 0).
        per_device_train_batch_size: questions per device per step.
        per_device_eval_batch_size: questions per device in generation.
        gradient_accumulation_steps: steps accumulated per optimizer update.
        warmup_steps: linear warmup steps (a float below 1 is a fraction of all steps).
        weight_decay: weight decay (the T5 recipe uses none).
        num_beams: beams in answer generation (1: greedy).
        generation_max_length: longest generated answer in tokens.
        precision: auto (bf16 where supported, else fp32; never fp16, where T5 overflows), fp32, fp16 or bf16.
        logging_steps: log the training loss every N steps.
        save_steps: save a checkpoint (for resume) every N steps; the last two are kept.
        save_model: save the fine-tuned model to out/model.
        seed: random seed (data order, dropout).
        max_train_samples: use only the first N training questions.
        max_eval_samples: use only the first N evaluation questions.
        resume: continue from the newest complete checkpoint in out/checkpoints (torn ones are skipped).
        force: reuse a non-empty out folder (its checkpoints/ and tensorboard/ are cleared).

    Example:
        longctx finetune --task seq2seq --model t5-small --train-file train-v1.1.json --eval-file dev-v1.1.json --out runs/t5
    """
    config = resolved_config(finetune_seq2seq, dict(locals()))
    check_values(config)
    from transformers import (
        DataCollatorForSeq2Seq,
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
        set_seed,
    )

    from longctx.data.squad import is_squad_v2, load_squad

    out_dir = Path(out)
    checkpoint = None
    if resume:
        checkpoint = _check_resume(out_dir, config)
    else:
        prepare_output_dir(out_dir, force=force)
        for stale in ("checkpoints", "tensorboard"):  # a forced rerun must not mix with the old run's state
            shutil.rmtree(out_dir / stale, ignore_errors=True)
    set_seed(seed)
    # T5 overflows in fp16 (activations exceed 65504; losses go NaN): auto never picks fp16 for it.
    resolved_precision = resolve_precision(precision, fp16_ok=False)
    precision_args = resolved_precision.trainer_flags()

    train_examples = eval_examples = None
    version_2 = False
    if train_file:
        train_examples = load_squad(train_file, split="train").examples[:max_train_samples or None]
        if not train_examples:
            raise LongctxError(f"{train_file}: no training questions")
    if eval_file:
        data = load_squad(eval_file, split="validation")
        eval_examples = data.examples[:max_eval_samples or None]
        if not eval_examples:
            raise LongctxError(f"{eval_file}: no evaluation questions")
        version_2 = is_squad_v2(data.version, eval_examples)

    tokenizer, net = load_seq2seq(model)
    limit = getattr(tokenizer, "model_max_length", None)
    if limit and limit < 10**6 and max_source_length > limit:
        log.info("max_source_length %d exceeds the tokenizer's model_max_length %d; T5's relative positions "
                 "allow it, at quadratic attention cost", max_source_length, limit)
    # written once the inputs load (a bad path leaves the folder empty); rewritten at the end
    write_json(out_dir / "run.json", run_metadata(config, seed, precision=resolved_precision))
    train_data = eval_data = None
    cut: dict[str, int] = {}
    if train_examples:
        train_data, cut["train_sources"], cut["train_targets"] = _encode(
            train_examples, tokenizer, max_source_length, max_target_length, "train")
    if eval_examples:
        eval_data, cut["eval_sources"], cut["eval_targets"] = _encode(
            eval_examples, tokenizer, max_source_length, max_target_length, "eval")

    args = Seq2SeqTrainingArguments(
        output_dir=str(out_dir / "checkpoints"), report_to="none", dataloader_num_workers=0,
        learning_rate=learning_rate, num_train_epochs=num_train_epochs, max_steps=max_steps,
        per_device_train_batch_size=per_device_train_batch_size, per_device_eval_batch_size=per_device_eval_batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps, warmup_steps=warmup_steps,
        weight_decay=weight_decay, logging_strategy="steps", logging_steps=logging_steps,
        save_strategy="steps" if train_data is not None else "no", save_steps=save_steps, save_total_limit=2,
        seed=seed, data_seed=seed, predict_with_generate=True, generation_num_beams=num_beams,
        generation_max_length=generation_max_length, **optimizer_args(optimizer, warmup_steps), **precision_args)
    tensorboard = tensorboard_callback(out_dir / "tensorboard")
    trainer = Seq2SeqTrainer(model=net, args=args, train_dataset=train_data,
                             data_collator=DataCollatorForSeq2Seq(tokenizer, model=net, label_pad_token_id=-100),
                             processing_class=tokenizer, callbacks=[tensorboard])

    metrics: dict[str, Any] = {"task": "seq2seq", "model": model, "train_file": train_file, "eval_file": eval_file,
                               "seed": seed}
    if train_data is not None:
        result = trainer.train(resume_from_checkpoint=str(checkpoint.path) if checkpoint else None)
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        metrics["train"] = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
        metrics["train"].update(examples=len(train_examples), truncated_contexts=cut["train_sources"],
                                truncated_targets=cut["train_targets"], first_loss=losses[0] if losses else None,
                                last_loss=losses[-1] if losses else None, optimizer=optimizer,
                                **resume_record(checkpoint, result.global_step))
        if save_model and trainer.is_world_process_zero():
            with staged_folder(out_dir / "model") as staged:  # a kill never leaves a model/ that looks complete
                trainer.save_model(str(staged))
    if eval_data is not None:
        start = time.perf_counter()
        generated, stats = _generate(trainer, tokenizer, eval_data, num_beams=num_beams,
                                     max_length=generation_max_length)
        generations = {ex["id"]: text for ex, text in zip(eval_examples, generated)}
        predictions = {qid: to_prediction(text) for qid, text in generations.items()}
        scores = _score(eval_examples, predictions, version_2)
        scores.update(truncated_contexts=cut["eval_sources"], eval_examples=len(eval_examples),
                      unanswerable_predicted=sum(1 for p in predictions.values() if not p),
                      eval_seconds=round(time.perf_counter() - start, 2))
        if "eval_loss" in stats:
            scores["eval_loss"] = stats["eval_loss"]
        metrics["eval"] = scores
        metrics["truncated_contexts"] = cut["eval_sources"]
        if trainer.is_world_process_zero():
            write_json(out_dir / "predictions.json", predictions)
            write_json(out_dir / "generations.json", generations)  # raw text, before unanswerable -> ""
            trainer.log({k if k.startswith("eval_") else f"eval_{k}": v for k, v in scores.items()
                         if isinstance(v, (int, float))})  # final scores in TensorBoard too
    if tensorboard.tb_writer is not None:
        tensorboard.tb_writer.close()
    if trainer.is_world_process_zero():
        write_json(out_dir / "log_history.json", trainer.state.log_history)
        write_json(out_dir / "run.json", run_metadata(config, seed, precision=resolved_precision))
        write_json(out_dir / "metrics.json", metrics)
    return metrics
