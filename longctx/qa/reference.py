"""The peer check: extractive QA fine-tuning on the plain Hugging Face Trainer, set up the way HF's run_qa.py
example sets it up by default, for comparing with longctx's pipeline at the same settings.

Deliberately independent of longctx's training path (its own windows, collator, sampler and precision): every
window is padded to max_length by one tokenizer call, batches are random (the Trainer's sampler), precision is
fp32 (run_qa.py's default without --fp16/--bf16), no warmup, no weight decay, linear decay. Only the decoding of
the windows' logits into answers and the official metric are longctx's (`longctx.qa.decode`,
`longctx.qa.metrics`): those were checked against run_qa.py's own scores, so the two pipelines differ only in
how they train and run the model. Reached as `longctx finetune --pipeline hf-reference ...` (finetune's route),
in a sweep matrix as a model with `pipeline: hf-reference`, and by bench/finetune.py.
"""
from __future__ import annotations

import time
from typing import Any, Literal

from longctx.common import LongctxError, prepare_output_dir, run_metadata, write_json
from longctx.config import resolved_config


def reference_features(examples: list[dict], tokenizer, max_length: int, doc_stride: int, train: bool):
    """run_qa.py-style windows: one tokenizer call, every window padded to max_length. Training labels are the
    answer's token span, or the first token (CLS) when the answer is not wholly inside the window; evaluation
    windows carry their question id and the context offsets the decoder needs."""
    enc = tokenizer([e["question"].lstrip() for e in examples], [e["context"] for e in examples],
                    truncation="only_second", max_length=max_length, stride=doc_stride,
                    return_overflowing_tokens=True, return_offsets_mapping=True, padding="max_length")
    owner = enc.pop("overflow_to_sample_mapping")
    offsets = enc.pop("offset_mapping")
    starts, ends, example_ids, context_offsets = [], [], [], []
    for w, ex_index in enumerate(owner):
        seq = enc.sequence_ids(w)
        example = examples[ex_index]
        if not train:
            example_ids.append(example["id"])
            context_offsets.append([tuple(o) if seq[i] == 1 else None for i, o in enumerate(offsets[w])])
            continue
        ctx = [i for i, s in enumerate(seq) if s == 1]
        a_start = example["answers"]["answer_start"][0]
        a_end = a_start + len(example["answers"]["text"][0])
        first, last = ctx[0], ctx[-1]
        if offsets[w][first][0] > a_start or offsets[w][last][1] < a_end:
            starts.append(0)
            ends.append(0)
            continue
        s = first
        while s <= last and offsets[w][s][0] <= a_start:
            s += 1
        e = last
        while e >= first and offsets[w][e][1] >= a_end:
            e -= 1
        starts.append(s - 1)
        ends.append(e + 1)
    columns = dict(enc)
    if train:
        columns.update(start_positions=starts, end_positions=ends)
        return columns, None
    return columns, {"example_id": example_ids, "offset_mapping": context_offsets}


def _examples(path: str, n: int | None, sample: str, train: bool) -> list[dict]:
    from longctx.data.squad import is_squad_v2, load_squad, spread_sample

    loaded = load_squad(path, split="train" if train else None)
    if is_squad_v2(loaded.version, loaded.examples):
        raise LongctxError(f"{path}: SQuAD 2.0 data; the hf-reference pipeline covers SQuAD 1.1-style data only")
    return spread_sample(loaded.examples, n) if sample == "spread" else loaded.examples[:n]


def finetune_reference(*, model: str, out: str, train_file: str | None = None, eval_file: str | None = None,
                       pipeline: Literal["hf-reference"] = "hf-reference", max_length: int = 384,
                       doc_stride: int = 128, learning_rate: float = 5e-5, num_train_epochs: float = 3.0,
                       max_steps: int = -1, per_device_train_batch_size: int = 8, per_device_eval_batch_size: int = 8,
                       gradient_accumulation_steps: int = 1, n_best: int = 20, max_answer_length: int = 30,
                       logging_steps: int = 50, save_model: bool = False, max_train_samples: int | None = None,
                       max_eval_samples: int | None = None, eval_sample: Literal["first", "spread"] = "first",
                       seed: int = 42, force: bool = False) -> dict[str, Any]:
    """Fine-tune and evaluate on the plain HF Trainer with run_qa.py's defaults (the peer check of longctx's pipeline).

    Args:
        model: model folder or hub name with a QA head or an encoder to put one on.
        out: run folder: metrics.json, predictions.json, nbest_predictions.json, run.json (model/ with save_model).
        train_file: SQuAD 1.1-format JSON to train on; omit to only evaluate.
        eval_file: SQuAD 1.1-format JSON to evaluate on.
        pipeline: hf-reference (the field `longctx finetune` uses to choose this recipe).
        max_length: tokens per window; every window is padded to it.
        doc_stride: overlap in tokens between consecutive windows of a long context.
        learning_rate: peak learning rate (linear decay, no warmup).
        num_train_epochs: epochs over the training windows.
        max_steps: stop after this many optimizer steps (overrides epochs when > 0).
        per_device_train_batch_size: windows per device per step (random batches).
        per_device_eval_batch_size: windows per device in evaluation.
        gradient_accumulation_steps: steps accumulated per optimizer update.
        n_best: candidate spans kept per example.
        max_answer_length: longest answer in tokens.
        logging_steps: log the training loss every N steps.
        save_model: save the fine-tuned model to out/model.
        max_train_samples: use only the first N training questions.
        max_eval_samples: evaluate on N questions only (see eval_sample).
        eval_sample: which N questions: the first N, or N spread evenly over the file (every article).
        seed: random seed (model init, data order, dropout).
        force: reuse a non-empty out folder.

    Example:
        longctx finetune --pipeline hf-reference --model bert-base-uncased --train-file train-v1.1.json --eval-file dev-v1.1.json --out runs/ref
    """
    config = resolved_config(finetune_reference, dict(locals()))
    if not train_file and not eval_file:
        raise LongctxError("nothing to do: give train_file and/or eval_file")
    if doc_stride >= max_length:
        raise LongctxError(f"doc_stride {doc_stride} must be smaller than max_length {max_length}")
    # Data first, then the folder, then the model: a bad file costs no model load and leaves no folder.
    train_examples = _examples(train_file, max_train_samples, "first", train=True) if train_file else None
    eval_examples = _examples(eval_file, max_eval_samples, eval_sample, train=False) if eval_file else None
    from longctx.models import resolve_model

    resolve_model(model)  # a missing model folder is a one-line error before the run folder exists
    out_dir = prepare_output_dir(out, force=force)

    from datasets import Dataset
    from transformers import Trainer, TrainingArguments, default_data_collator, set_seed

    from longctx.models import load_qa_model
    from longctx.precision import Precision
    from longctx.qa.decode import postprocess_predictions, write_predictions
    from longctx.qa.metrics import compute_metrics, score_line

    set_seed(seed)
    # The model's own attention (no longctx kernels): the reference is what a plain HF user runs.
    tokenizer, qa_model = load_qa_model(model, fast_attention=False)
    args = TrainingArguments(output_dir=str(out_dir / "checkpoints"), learning_rate=learning_rate,
                             num_train_epochs=num_train_epochs, max_steps=max_steps,
                             per_device_train_batch_size=per_device_train_batch_size,
                             per_device_eval_batch_size=per_device_eval_batch_size,
                             gradient_accumulation_steps=gradient_accumulation_steps, seed=seed,
                             logging_steps=logging_steps, save_strategy="no", report_to="none",
                             dataloader_num_workers=0)
    device = "cuda" if args.device.type == "cuda" else "cpu"
    precision = Precision("fp32", device, "hf-reference: run_qa.py's default (no --fp16/--bf16)")
    trainer = Trainer(model=qa_model, args=args, data_collator=default_data_collator)
    metrics: dict[str, Any] = {"model": model, "train_file": train_file, "eval_file": eval_file, "seed": seed,
                               "pipeline": "hf-reference"}
    if train_examples:
        columns, _ = reference_features(train_examples, tokenizer, max_length, doc_stride, train=True)
        train_ds = Dataset.from_dict(columns)
        trainer.train_dataset = train_ds
        result = trainer.train()
        metrics["train"] = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
        metrics["train"].update(global_step=result.global_step, windows=len(train_ds), examples=len(train_examples),
                                real_tokens=int(sum(sum(m) for m in train_ds["attention_mask"])))
        if save_model:
            trainer.save_model(str(out_dir / "model"))
    if eval_examples:
        start = time.perf_counter()
        columns, meta = reference_features(eval_examples, tokenizer, max_length, doc_stride, train=False)
        output = trainer.predict(Dataset.from_dict(columns))
        preds = postprocess_predictions(eval_examples, meta, output.predictions[0], output.predictions[1],
                                        n_best=n_best, max_answer_length=max_answer_length)
        metrics["eval"] = compute_metrics(preds.predictions, examples=eval_examples, version="1.1")
        metrics["eval"].update(eval_seconds=round(time.perf_counter() - start, 2), eval_examples=len(eval_examples))
        write_predictions(out_dir, preds)
    checkpoints = out_dir / "checkpoints"
    if checkpoints.is_dir() and not any(checkpoints.iterdir()):
        checkpoints.rmdir()  # the Trainer's output_dir, unused (save_strategy "no")
    write_json(out_dir / "run.json", run_metadata(config, seed, precision=precision))
    write_json(out_dir / "metrics.json", metrics)
    if eval_examples:
        print(score_line(str(out_dir), metrics["eval"]), flush=True)
    return metrics
