"""Fine-tune and evaluate extractive QA (SQuAD-format data) on the Hugging Face Trainer.

Any encoder with a QA head works: BERT, RoBERTa, XLM-R, Longformer and longctx-converted models.
The fast path is the default: windows padded per batch (not to max_length), training batches grouped by
length inside small random buckets, evaluation windows sorted by length, the precision policy's choice
(longctx.precision: bf16 only where the hardware computes it natively), and longctx's exact SDPA attention
for Longformer models.

Tracking: the training loss and the QA scores (EM/F1, HasAns/NoAns for SQuAD 2.0, from longctx's decoding
and the official metric) go to TensorBoard under out/tensorboard, and to W&B or MLflow with `report_to`;
with `eval_steps` the model is evaluated during training and the checkpoint with the best F1 is kept and
loaded at the end. A run ends with one line of its scores on stdout.
"""
from __future__ import annotations

import importlib.util
import os
import re
import time
from pathlib import Path
from typing import Any, Literal

from longctx.checkpoints import resume_checkpoint, resume_record, staged_folder
from longctx.common import (LongctxError, prepare_output_dir, run_metadata,
                            tensorboard_callback, write_json)
from longctx.config import resolved_config, routed
from longctx.models import is_longformer, load_qa_model, load_tokenizer, model_max_tokens
from longctx.qa.metrics import check_lang

Precision = Literal["auto", "fp32", "fp16", "bf16"]
Tracker = Literal["tensorboard", "wandb", "mlflow", "none"]
Sample = Literal["first", "spread"]
# Each tracker's package: the Trainer's own integration runs it (TensorBoard through `tensorboard_callback`, so
# its files land in out/tensorboard).
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
# The scores sent to trackers: EM and F1 in every variant (exact_match, exact, HasAns_f1, ...), not counts or times.
SCORE = re.compile(r"(exact|exact_match|f1)$")


def qa_trainer_class():
    from transformers import Trainer

    class QATrainer(Trainer):
        """Trainer whose training batches come from longctx's bucketed length sampler when asked
        (`bucket_batches` > 0; see longctx.qa.batching for why not transformers' group_by_length)."""

        bucket_batches = 0
        # () -> QA metrics of the evaluation set; set to evaluate with longctx's decoding during training.
        qa_evaluation = None

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            # The Trainer's own evaluation is a loss over windows; QA is scored per question after decoding
            # every window of a context, so evaluation during training (and the best checkpoint) uses that.
            if self.qa_evaluation is None:
                return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
            metrics = {f"{metric_key_prefix}_{k}": v for k, v in self.qa_evaluation().items() if SCORE.search(k)}
            self.log(dict(metrics))
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics

        def _get_train_sampler(self, train_dataset=None):
            # The Trainer drops columns the model does not take (our "length") before it asks for a sampler,
            # so the lengths come from the dataset as given to the Trainer (same rows, same order).
            dataset = self.train_dataset
            if not self.bucket_batches or dataset is None or "length" not in dataset.column_names:
                return super()._get_train_sampler(train_dataset)
            from longctx.qa.batching import BucketedLengthSampler

            return BucketedLengthSampler(dataset["length"], self.args.train_batch_size *
                                         self.args.gradient_accumulation_steps, self.bucket_batches,
                                         seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed)

    return QATrainer


def check_lengths(max_length: int, doc_stride: int, positions: int | None = None) -> None:
    """The window checks of finetune and evaluate: the stride against the window, and the window against the
    model's `positions` (`models.model_max_tokens`) when known. Public because a sweep runs the same checks
    on every cell when it plans, before anything starts."""
    if max_length < 1:
        raise LongctxError(f"field 'max_length': {max_length} must be at least 1")
    if not 0 <= doc_stride < max_length // 2:
        raise LongctxError(f"field 'doc_stride': {doc_stride} must be well below max_length {max_length} "
                           f"(under half of it: it is the overlap) and not negative")
    if positions is not None and max_length > positions:
        raise LongctxError(f"field 'max_length': {max_length} is longer than the model's {positions} positions")


def _triviaqa_tokenizer(model: str, *sources: str | None):
    """The tokenizer TriviaQA's reader needs (documents are cut to a token budget), loaded only after the local qa
    files' layout has been checked: a broken file costs no tokenizer or model load."""
    from longctx.data.triviaqa import load_qa_data
    from longctx.models import looks_local

    for source in sources:
        if source and looks_local(source):
            load_qa_data(source)
    return load_tokenizer(model)


def load_examples(source: str, data_format: str = "squad", max_samples: int | None = None, *,
                  tokenizer=None, train: bool = False, max_doc_tokens: int = 4096, sample: str = "first"):
    """Flat QA examples and the SQuAD version ("1.1"/"2.0") from a file or dataset name; with `max_samples`,
    the first N questions or (`sample="spread"`) N spread evenly over the file.

    TriviaQA becomes one record per (question, document), the document cut to `max_doc_tokens`
    tokens; training drops documents without an answer, evaluation keeps them (its version is 1.1:
    it has no unanswerable questions)."""
    if Path(source).is_dir():  # else "not found": the path exists, it is the wrong kind
        expected = "a TriviaQA qa JSON file" if data_format == "triviaqa" else "a SQuAD JSON file"
        raise LongctxError(f"{source}: is a folder, expected {expected}")
    if data_format == "triviaqa":
        from longctx.data.triviaqa import read_triviaqa

        loaded = read_triviaqa(source, tokenizer=tokenizer, max_tokens=max_doc_tokens, train=train)
    else:
        from longctx.data.squad import load_squad

        loaded = load_squad(source, split="train" if train else None)
    if sample == "spread":
        from longctx.data.squad import spread_sample

        return spread_sample(loaded.examples, max_samples), loaded.version
    examples = loaded.examples[:max_samples] if max_samples else loaded.examples
    return examples, loaded.version


def _is_main_process() -> bool:
    """True in a plain run and on global rank 0 of a torchrun launch.

    Read from torchrun's environment (RANK) because the output folder is prepared before TrainingArguments
    starts the process group; it is the same process the Trainer calls world process zero."""
    return int(os.environ.get("RANK", "0")) == 0


def trackers(report_to: list[str] | None, out: Path) -> tuple[list, list[str]]:
    """(Trainer callbacks, TrainingArguments.report_to) for `report_to` (default: TensorBoard; none: nothing).

    Checked before any model is loaded: a tracker asked for but not installed is a one-line error."""
    names = list(report_to) if report_to else ["tensorboard"]
    for name in names:
        if name not in (*TRACKER_PACKAGES, "none"):
            raise LongctxError(f"report_to: unknown tracker {name!r} (choose from {', '.join(TRACKER_PACKAGES)} or none)")
        if name != "none" and importlib.util.find_spec(TRACKER_PACKAGES[name]) is None:
            raise LongctxError(f"report_to {name}: the {TRACKER_PACKAGES[name]} package is not installed "
                               f"(pip install {TRACKER_PACKAGES[name]})")
    if "none" in names:
        if len(names) > 1:
            raise LongctxError(f"report_to: 'none' cannot be combined with {', '.join(n for n in names if n != 'none')}")
        return [], []
    callbacks = [tensorboard_callback(out / "tensorboard")] if "tensorboard" in names else []
    return callbacks, [n for n in names if n != "tensorboard"]


def _checkpointing(training: bool, eval_steps: int) -> dict[str, Any]:
    """TrainingArguments for checkpoints: one per epoch; with `eval_steps`, one per evaluation, the best by QA F1
    kept (save_total_limit never deletes it) and loaded when training ends."""
    if not training:
        return {"save_strategy": "no"}
    if not eval_steps:
        return {"save_strategy": "epoch"}
    return {"eval_strategy": "steps", "eval_steps": eval_steps, "save_strategy": "steps", "save_steps": eval_steps,
            "load_best_model_at_end": True, "metric_for_best_model": "f1", "greater_is_better": True}


def _training_args(out: Path, precision: str, **kwargs):
    from transformers import TrainingArguments

    from longctx.precision import resolve_precision

    resolved = resolve_precision(precision)
    flags = resolved.trainer_flags()
    if flags["use_cpu"] and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # torchrun on CPU: DDP over gloo. accelerate would pick MPI instead when torch is built with it, which
        # cannot join torchrun's env:// rendezvous. (Not set in a single process: there it asks for a process group.)
        kwargs.setdefault("ddp_backend", "gloo")
    args = TrainingArguments(output_dir=str(out / "checkpoints"), report_to=kwargs.pop("report_to", None) or "none",
                             dataloader_num_workers=0,
                             save_strategy=kwargs.pop("save_strategy", "epoch"), save_total_limit=2,
                             logging_strategy="steps", **flags, **kwargs)
    return resolved, args


def predict_qa(trainer, tokenizer, examples: list[dict], *, max_length: int, doc_stride: int, global_attention: bool,
               n_best: int, max_answer_length: int, version_2: bool, null_threshold: float):
    """Windows -> logits -> n-best spans per example (all windows of an example compete)."""
    from datasets import Dataset

    from longctx.qa.batching import length_sorted
    from longctx.qa.decode import postprocess_predictions
    from longctx.qa.features import prepare_eval_features

    dataset = Dataset.from_list(examples)
    features = dataset.map(prepare_eval_features, batched=True, remove_columns=dataset.column_names,
                           fn_kwargs=dict(tokenizer=tokenizer, max_length=max_length, doc_stride=doc_stride,
                                          global_attention=global_attention), desc="eval windows")
    inputs = features.remove_columns([c for c in ("example_id", "offset_mapping") if c in features.column_names])
    # Longest windows first: each batch pads to similar lengths (the evaluation order cannot change a result);
    # the logits are put back in window order for decoding.
    order, inverse = length_sorted([len(ids) for ids in inputs["input_ids"]])
    output = trainer.predict(inputs.select(order))
    start_logits, end_logits = (logits[inverse] for logits in output.predictions[:2])
    return postprocess_predictions(examples, features, start_logits, end_logits, n_best=n_best,
                                   max_answer_length=max_answer_length, version_2=version_2,
                                   null_threshold=null_threshold)


def score_predictions(examples: list[dict], predictions: dict[str, str], version_2: bool,
                      triviaqa_file: str | None = None, lang: str | None = None) -> dict[str, Any]:
    """Official metrics: SQuAD v1.1/v2.0, or TriviaQA's against its original qa file (aliases, per domain)."""
    from longctx.qa.metrics import compute_metrics

    if triviaqa_file:
        return compute_metrics(predictions, format="triviaqa", triviaqa_gold=triviaqa_file)
    return compute_metrics(predictions, examples=examples, version="2.0" if version_2 else "1.1", lang=lang)


def _evaluate_and_write(trainer, tokenizer, examples, out: Path | None, *, version_2: bool, tune_threshold: bool,
                        null_threshold: float, triviaqa_file: str | None = None, lang: str | None = None,
                        **decode) -> dict[str, Any]:
    from longctx.qa.decode import find_best_threshold, write_predictions

    start = time.perf_counter()
    preds = predict_qa(trainer, tokenizer, examples, version_2=version_2, null_threshold=null_threshold, **decode)
    metrics = score_predictions(examples, preds.predictions, version_2, triviaqa_file, lang)
    if version_2 and tune_threshold:
        threshold, best_f1 = find_best_threshold(examples, preds.null_scores, preds.span_predictions)
        metrics["best_null_threshold"], metrics["best_null_threshold_f1"] = threshold, best_f1
    if lang:
        metrics["normalisation"] = f"mlqa:{lang}"
    metrics["eval_seconds"] = round(time.perf_counter() - start, 2)
    metrics["eval_examples"] = len(examples)
    if out is not None and trainer.is_world_process_zero():  # evaluate without --out writes nothing
        write_predictions(out, preds)
    return metrics


def finetune(*, model: str, out: str, train_file: str | None = None, eval_file: str | None = None,
             task: Literal["extractive", "seq2seq"] = "extractive",
             pipeline: Literal["longctx", "hf-reference"] = "longctx",
             data_format: Literal["squad", "triviaqa"] = "squad", max_doc_tokens: int = 4096, max_length: int = 384, doc_stride: int = 128, global_attention: bool | None = None,
             learning_rate: float = 3e-5, num_train_epochs: float = 3.0, max_steps: int = -1,
             per_device_train_batch_size: int = 8, per_device_eval_batch_size: int = 16,
             gradient_accumulation_steps: int = 1, warmup_steps: float = 0.0, weight_decay: float = 0.0,
             precision: Precision = "auto", group_by_length: bool = True, bucket_batches: int = 8,
             fast_attention: bool = True, attention_dropout: float | None = None,
             gradient_checkpointing: bool = False, n_best: int = 20, max_answer_length: int = 30,
             null_threshold: float = 0.0, tune_threshold: bool = True, lang: str | None = None,
             eval_before: bool = False, eval_steps: int = 0, report_to: list[Tracker] | None = None,
             logging_steps: int = 50, save_model: bool = True, max_train_samples: int | None = None,
             max_eval_samples: int | None = None, eval_sample: Sample = "first", seed: int = 42,
             resume: bool = False, force: bool = False) -> dict[str, Any]:
    """Fine-tune a QA model on SQuAD-format data, evaluate it, and write predictions and metrics.

    Args:
        model: model folder or hub name (BERT, RoBERTa, XLM-R, Longformer or a longctx-converted model).
        out: run folder: metrics.json, predictions.json, nbest_predictions.json, run.json, tensorboard/, model/.
        train_file: SQuAD-format JSON (or dataset name) to train on; omit to only evaluate.
        eval_file: SQuAD-format JSON (or dataset name) to evaluate on; v2.0 files get null-answer decoding.
        task: extractive (span prediction) or seq2seq (T5-style generation, see longctx.seq2seq).
        pipeline: longctx, or hf-reference: the same job on the plain HF Trainer with run_qa.py's defaults
            (fp32, windows padded to max_length, random batches; longctx.qa.reference), a peer check.
        data_format: layout of train_file/eval_file: squad, or triviaqa (official qa JSON + evidence/).
        max_doc_tokens: TriviaQA: each document is cut to this many tokens before answers are marked.
        max_length: tokens per window (question + context).
        doc_stride: overlap in tokens between consecutive windows of a long context.
        global_attention: global attention on question tokens (default: on for Longformer models).
        learning_rate: peak learning rate (linear decay).
        num_train_epochs: epochs over the training windows.
        max_steps: stop after this many optimizer steps (overrides epochs when > 0).
        per_device_train_batch_size: windows per device per step.
        per_device_eval_batch_size: windows per device in evaluation.
        gradient_accumulation_steps: steps accumulated per optimizer update.
        warmup_steps: linear warmup steps (a float below 1 is a fraction of all steps).
        weight_decay: AdamW weight decay.
        precision: auto (bf16 where the GPU or CPU computes it natively, fp16 on older GPUs, else fp32),
            fp32, fp16 or bf16.
        group_by_length: batch windows of similar length from small random buckets (less padding, batches stay
            diverse; see longctx.qa.batching).
        bucket_batches: batches per length bucket when group_by_length (larger: less padding, less diverse).
        fast_attention: longctx's kernels: exact SDPA sliding-window attention for Longformer, and on CPU
            dropout (attention dropout too) from cheap masks, same distribution (longctx.fastcpu); off:
            transformers' own.
        attention_dropout: dropout on attention probabilities while fine-tuning (default: the model's own, 0.1 in
            BERT-family configs). 0 lets PyTorch's fused attention kernel run, which has no dropout on CPU:
            faster CPU steps (1.4-2.4x against torch's dropout; less against longctx.fastcpu's), the same
            SQuAD F1 for MiniLM, but less learnt on the demo's long-context task, so it is not the default
            (bench/RESULTS.md).
        gradient_checkpointing: trade compute for memory (long models at 4096).
        n_best: candidate spans kept per example.
        max_answer_length: longest answer in tokens.
        null_threshold: SQuAD 2.0: predict no answer when null score - best span score exceeds this.
        tune_threshold: SQuAD 2.0: also report the best null threshold on the eval set.
        lang: score with MLQA's language-aware normalisation for this answer language (e.g. de, zh).
        eval_before: also evaluate before training (reported as metrics["before"]).
        eval_steps: also evaluate every N optimizer steps (QA EM/F1 to the trackers), keep the checkpoint with
            the best F1 and load it at the end (0: evaluate once, after training).
        report_to: trackers of the loss and the QA scores: tensorboard (default, out/tensorboard), wandb,
            mlflow (each needs its package installed), or none.
        logging_steps: log the training loss every N steps.
        save_model: save the fine-tuned model to out/model.
        max_train_samples: use only the first N training questions.
        max_eval_samples: evaluate on N questions only (see eval_sample).
        eval_sample: which N questions: the first N, or N spread evenly over the file (every article; a
            file's first questions all come from its first article).
        seed: random seed (model init, data order, dropout).
        resume: continue from the newest complete checkpoint in out/checkpoints (torn ones are skipped).
        force: reuse a non-empty out folder.

    Example:
        longctx finetune --model models/roberta-long --train-file train-v1.1.json --eval-file dev-v1.1.json --out runs/squad
    """
    # task: seq2seq and pipeline: hf-reference never reach this body: `_route` (below) sends them to their
    # own verbs on every route.
    config = resolved_config(finetune, dict(locals()))
    if not train_file and not eval_file:
        raise LongctxError("nothing to do: give train_file and/or eval_file")
    if eval_steps < 0 or (eval_steps and not (train_file and eval_file)):
        raise LongctxError(f"eval_steps {eval_steps}: evaluating during training needs train_file and eval_file "
                           f"and eval_steps > 0")
    check_lengths(max_length, doc_stride)  # the window checks that need no model, before any work
    if attention_dropout is not None and not 0 <= attention_dropout < 1:
        raise LongctxError(f"attention_dropout {attention_dropout}: must be in [0, 1)")
    callbacks, report_to_trainer = trackers(report_to, Path(out))
    from transformers import set_seed

    from longctx.qa.features import QACollator, prepare_train_features

    out_dir = Path(out)
    # the newest complete checkpoint, chosen before any data or model work (torn ones are skipped: see
    # longctx.checkpoints)
    checkpoint = resume_checkpoint(out_dir / "checkpoints", out_dir) if resume else None
    # Cheap checks first: a typo in a data path should not cost a model load.
    train_examples, eval_examples, version_2 = None, None, False
    tokenizer = _triviaqa_tokenizer(model, train_file, eval_file) if data_format == "triviaqa" else None
    data_args = dict(tokenizer=tokenizer, max_doc_tokens=max_doc_tokens)
    if train_file:
        train_examples, _ = load_examples(train_file, data_format, max_train_samples, train=True, **data_args)
    if eval_file:
        eval_examples, version = load_examples(eval_file, data_format, max_eval_samples, sample=eval_sample,
                                               **data_args)
        if data_format == "squad":
            check_lang(eval_file, eval_examples, version, lang)
        from longctx.data.squad import is_squad_v2

        version_2 = is_squad_v2(version, eval_examples)
    if not resume and _is_main_process():
        # Under torchrun only rank 0 checks and creates the folder: another rank checking it could see rank 0's
        # fresh files and refuse "not empty". Other ranks write nothing here before the process group exists,
        # and rank 0 prepares the folder before it joins that group, so no barrier is needed.
        prepare_output_dir(out_dir, force=force)
    set_seed(seed)
    tokenizer, qa_model = load_qa_model(model, fast_attention=fast_attention, attention_dropout=attention_dropout)
    check_lengths(max_length, doc_stride, model_max_tokens(qa_model.config))
    if global_attention is None:
        global_attention = is_longformer(qa_model)
    if gradient_checkpointing:
        qa_model.gradient_checkpointing_enable()

    feature_args = dict(tokenizer=tokenizer, max_length=max_length, doc_stride=doc_stride,
                        global_attention=global_attention)
    train_features = None
    if train_examples:
        from datasets import Dataset

        raw = Dataset.from_list(train_examples)
        train_features = raw.map(prepare_train_features, batched=True, remove_columns=raw.column_names,
                                 fn_kwargs=feature_args, desc="train windows")
        train_features = train_features.map(lambda b: {"length": [len(x) for x in b["input_ids"]]},
                                            batched=True, desc="lengths")
    resolved_precision, args = _training_args(
        out_dir, precision, learning_rate=learning_rate, num_train_epochs=num_train_epochs, max_steps=max_steps,
        per_device_train_batch_size=per_device_train_batch_size,
        per_device_eval_batch_size=per_device_eval_batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps, warmup_steps=warmup_steps,
        weight_decay=weight_decay, logging_steps=logging_steps, seed=seed, data_seed=seed,
        report_to=report_to_trainer, **_checkpointing(bool(train_examples), eval_steps))
    decode = dict(max_length=max_length, doc_stride=doc_stride, global_attention=global_attention, n_best=n_best,
                  max_answer_length=max_answer_length)
    triviaqa_file = eval_file if data_format == "triviaqa" else None
    from datasets import Dataset

    # eval_dataset only satisfies the Trainer's check for evaluation during training: QATrainer.evaluate scores
    # the questions themselves (qa_evaluation below).
    trainer = qa_trainer_class()(model=qa_model, args=args, train_dataset=train_features,
                                  eval_dataset=Dataset.from_list(eval_examples) if eval_steps else None,
                                  data_collator=QACollator(tokenizer), processing_class=tokenizer,
                                  callbacks=callbacks)
    trainer.bucket_batches = bucket_batches if group_by_length else 0
    if eval_steps:
        trainer.qa_evaluation = lambda: score_predictions(
            eval_examples, predict_qa(trainer, tokenizer, eval_examples, version_2=version_2,
                                      null_threshold=null_threshold, **decode).predictions,
            version_2, triviaqa_file, lang)
    metrics: dict[str, Any] = {"model": model, "train_file": train_file, "eval_file": eval_file, "seed": seed}
    if eval_examples and eval_before:
        before = predict_qa(trainer, tokenizer, eval_examples, version_2=version_2, null_threshold=null_threshold,
                            **decode)
        metrics["before"] = score_predictions(eval_examples, before.predictions, version_2,
                                              eval_file if data_format == "triviaqa" else None, lang)
    if train_features is not None:
        result = trainer.train(resume_from_checkpoint=str(checkpoint.path) if checkpoint else None)
        metrics["train"] = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
        metrics["train"]["global_step"] = result.global_step
        metrics["train"]["windows"] = len(train_features)
        metrics["train"]["real_tokens"] = int(sum(train_features["length"]))  # non-pad tokens per epoch
        metrics["train"]["examples"] = len(train_examples)
        metrics["train"]["world_size"] = args.world_size  # processes (torchrun ranks) that trained
        if eval_steps:
            metrics["evaluations"] = [{k.removeprefix("eval_"): v for k, v in entry.items()}
                                      for entry in trainer.state.log_history if "eval_f1" in entry]
            metrics["train"]["best_f1"] = trainer.state.best_metric
            metrics["train"]["best_step"] = trainer.state.best_global_step  # its weights are the ones saved below
        metrics["train"].update(resume_record(checkpoint, result.global_step))
        if save_model and trainer.is_world_process_zero():
            with staged_folder(out_dir / "model") as staged:  # a kill never leaves a model/ that looks complete
                trainer.save_model(str(staged))
    if eval_examples:
        metrics["eval"] = _evaluate_and_write(
            trainer, tokenizer, eval_examples, out_dir, version_2=version_2, tune_threshold=tune_threshold,
            null_threshold=null_threshold, triviaqa_file=eval_file if data_format == "triviaqa" else None,
            lang=lang, **decode)
        # The final scores go to the trackers too, at the last step (the Trainer only logged the loss).
        trainer.log({f"eval_{k}": v for k, v in metrics["eval"].items() if SCORE.search(k)})
    for callback in callbacks:  # the TensorBoard writer reopened for that entry: close it so the file is complete
        if getattr(callback, "tb_writer", None) is not None:
            callback.tb_writer.close()
            callback.tb_writer = None
    if trainer.is_world_process_zero():
        write_json(out_dir / "run.json", run_metadata(config, seed, precision=resolved_precision))
        write_json(out_dir / "metrics.json", metrics)
        if eval_examples:
            from longctx.qa.metrics import score_line

            print(score_line(str(out_dir), metrics["eval"]), flush=True)
    return metrics


def evaluate(*, model: str, data: str, out: str | None = None,
             data_format: Literal["squad", "triviaqa"] = "squad", max_doc_tokens: int = 4096, max_length: int = 384, doc_stride: int = 128, global_attention: bool | None = None,
             per_device_eval_batch_size: int = 16, precision: Precision = "auto", fast_attention: bool = True,
             n_best: int = 20, max_answer_length: int = 30, null_threshold: float = 0.0, lang: str | None = None,
             max_eval_samples: int | None = None, eval_sample: Sample = "first",
             force: bool = False) -> dict[str, Any]:
    """Evaluate a saved QA model on SQuAD-format data; print the official-format metrics.

    Args:
        model: fine-tuned QA model folder (e.g. RUN/model) or hub name.
        data: SQuAD-format JSON (or dataset name).
        out: folder for predictions.json, nbest_predictions.json and metrics.json (default: no files).
        data_format: layout of the data file: squad, or triviaqa (official qa JSON + evidence/).
        max_doc_tokens: TriviaQA: each document is cut to this many tokens.
        max_length: tokens per window.
        doc_stride: overlap in tokens between windows.
        global_attention: global attention on question tokens (default: on for Longformer models).
        per_device_eval_batch_size: windows per batch.
        precision: auto (bf16 where the GPU or CPU computes it natively, fp16 on older GPUs, else fp32),
            fp32, fp16 or bf16.
        fast_attention: longctx's kernels: exact SDPA sliding-window attention for Longformer, and on CPU
            dropout (attention dropout too) from cheap masks, same distribution (longctx.fastcpu); off:
            transformers' own.
        n_best: candidate spans kept per example.
        max_answer_length: longest answer in tokens.
        null_threshold: SQuAD 2.0 null-answer threshold.
        lang: score with MLQA's language-aware normalisation for this answer language (e.g. de, zh).
        max_eval_samples: evaluate on N questions only (see eval_sample).
        eval_sample: which N questions: the first N, or N spread evenly over the file (every article).
        force: reuse a non-empty out folder.

    Example:
        longctx evaluate --model runs/squad/model --data xquad.de.json --lang de --out runs/xquad-de
    """
    import json
    import tempfile

    from longctx.data.squad import is_squad_v2
    from longctx.qa.features import QACollator

    config = resolved_config(evaluate, dict(locals()))
    check_lengths(max_length, doc_stride)
    # Cheap checks first: the data, then the output folder, then the model (a bad file costs no model load
    # and leaves no folder behind).
    tokenizer = _triviaqa_tokenizer(model, data) if data_format == "triviaqa" else None
    examples, version = load_examples(data, data_format, max_eval_samples, tokenizer=tokenizer,
                                      max_doc_tokens=max_doc_tokens, sample=eval_sample)
    if data_format == "squad":
        check_lang(data, examples, version, lang)
    version_2 = is_squad_v2(version, examples)
    out_dir = Path(out) if out else None
    created = out_dir is not None and not out_dir.exists() and _is_main_process()
    if out_dir is not None and _is_main_process():  # under torchrun only rank 0 prepares the folder (see finetune)
        prepare_output_dir(out_dir, force=force)
    try:
        # The Trainer wants a folder of its own even when it saves nothing (it creates checkpoints/ there):
        # a scratch one, removed whatever happens, so no --out means no files.
        with tempfile.TemporaryDirectory(prefix="longctx-eval-") as scratch:
            tokenizer, qa_model = load_qa_model(model, fast_attention=fast_attention)
            check_lengths(max_length, doc_stride, model_max_tokens(qa_model.config))
            if global_attention is None:
                global_attention = is_longformer(qa_model)
            resolved_precision, args = _training_args(Path(scratch), precision, save_strategy="no",
                                                      per_device_eval_batch_size=per_device_eval_batch_size)
            trainer = qa_trainer_class()(model=qa_model, args=args, data_collator=QACollator(tokenizer),
                                          processing_class=tokenizer)
            metrics = _evaluate_and_write(trainer, tokenizer, examples, out_dir, version_2=version_2,
                                          tune_threshold=False, null_threshold=null_threshold,
                                          max_length=max_length, doc_stride=doc_stride,
                                          triviaqa_file=data if data_format == "triviaqa" else None, lang=lang,
                                          global_attention=global_attention, n_best=n_best,
                                          max_answer_length=max_answer_length)
    except BaseException:
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()  # the folder this call made, still empty: nothing to keep
        raise
    if not trainer.is_world_process_zero():  # torchrun: rank 0 writes and prints the result once
        return metrics
    if out_dir is not None:
        write_json(out_dir / "metrics.json", {"model": model, "eval_file": data, "eval": metrics})
        write_json(out_dir / "run.json", run_metadata(config, precision=resolved_precision))
    print(json.dumps({k: v for k, v in metrics.items() if not k.startswith("eval_")}, indent=2))
    return metrics


def _route(values: dict[str, Any]):
    """The one place another recipe is chosen: `task: seq2seq` (Python call, recipe, command line or sweep
    cell) selects the T5 fine-tuning verb, `pipeline: hf-reference` the plain-Trainer reference; each is bound
    with its own fields, so a field it lacks is refused by name."""
    if values.get("task") == "seq2seq":
        from longctx.seq2seq import finetune_seq2seq

        return finetune_seq2seq
    if values.get("pipeline") == "hf-reference":
        from longctx.qa.reference import finetune_reference

        return finetune_reference
    return finetune


finetune = routed(finetune, ("task", "pipeline"), _route)
