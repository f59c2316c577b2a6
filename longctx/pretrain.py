"""MLM continuation pretraining of a converted Longformer (Beltagy et al. 2020, section 5) on the HF Trainer.

Flow (`pretrain`, one named step each): load the converted folder (`longctx convert`) (`_setup_model`; a
model without an MLM head, e.g. from a sentence encoder, gets a fresh one tied to its input embeddings),
read WikiText raw text as articles and pack it into blocks of `block_size` tokens (`_setup_data`:
`longctx.data.wikitext`, masked by `longctx.data.mlm`), build the Trainer (`_setup_trainer`), evaluate
the source model at 512 tokens and the converted model at `block_size` on the same masked text
(`_evaluate_before`: the paper's sanity check: converted ~ source, far from a random model), train with
15% dynamic masking (`_train`), re-copy the global projections from the trained local ones and save an
ordinary Longformer checkpoint to `out/model` (`_save`), and evaluate it again.

Metrics (all on the same evaluation text and the same masks):

* `loss`: mean cross-entropy (nats) over the masked tokens; `perplexity` = exp(loss).
* `bits_per_token` = loss / ln 2. The thesis reported this number as "BPC"; it is bits per *token*.
* `bits_per_character` = loss x tokens / characters / ln 2. With MLM only ~15% of the tokens carry a
  loss, so the total loss over the evaluation text is estimated as the mean masked-token loss times the
  text's token count: the per-token loss rescaled by the text's tokens per character.
  `tokens` are the text's tokens (no cls/sep/separators), `characters` the characters of exactly the text
  that was tokenized (WikiText raw, newlines included; cut at the last evaluated token with
  `max_eval_blocks`).

Evaluation masks are drawn once with a fixed seed, so the source at 512, the converted model at
`block_size` and the trained model are scored on identical masked tokens; training masks depend only on
(seed, epoch, block index), so a resumed run trains bit-identically (see `longctx.data.mlm`).

Outputs in `out/`: `checkpoints/` (Trainer checkpoints, `--resume` continues from the last one),
`tensorboard/`, `model/` (final model + tokenizer, loadable with AutoModelForMaskedLM and ready for
`longctx finetune`), `metrics.json` (before/after evaluation, data statistics, config, versions, commit),
`run.json` (run_metadata) and `config.json` (the resolved config, usable as `--config`).
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from longctx.checkpoints import resume_checkpoint, staged_folder
from longctx.common import (LongctxError, log, prepare_output_dir, read_json, run_metadata,
                            tensorboard_callback, write_json)
from longctx.config import resolved_config
from longctx.data import wikitext
from longctx.data.mlm import EVAL_MASK_SEED, MaskedBlocks, MaskedText, masked_eval_text, special_ids
from longctx.models import (copy_global_projections, load_mlm, model_max_tokens, quiet_transformers,
                            uses_fast_attention)
from longctx.precision import Precision, resolve_precision

LN2 = math.log(2)

# Fields that must not change when resuming: they define the data order, the masks or the model.
_RESUME_FIXED = ("model", "train_file", "dataset", "block_size", "packing", "mlm_probability", "seed",
                 "per_device_train_batch_size", "gradient_accumulation_steps")
_OUR_OUTPUTS = ("checkpoints", "model", "tensorboard", "metrics.json", "run.json", "config.json")


def mlm_metrics(loss_sum: float, masked_tokens: int, text_tokens: int, characters: int) -> dict[str, float]:
    """Loss, perplexity, bits per token and bits per character from one summed masked-token loss.

    Args:
        loss_sum: cross-entropy (nats) summed over the masked tokens.
        masked_tokens: number of masked tokens (positions with a label).
        text_tokens: tokens of the evaluated text (special tokens excluded).
        characters: characters of the same text.
    """
    loss = loss_sum / masked_tokens
    return {"loss": loss,
            "perplexity": math.exp(loss) if loss < 700 else math.inf,
            "bits_per_token": loss / LN2,
            "bits_per_character": loss * text_tokens / characters / LN2,
            "masked_tokens": int(masked_tokens), "tokens": int(text_tokens), "characters": int(characters)}


# ------------------------------------------------------------------------------------------ evaluation


def _autocast(device, precision: str):
    import torch

    if precision in ("fp16", "bf16"):
        return torch.autocast(device_type=device.type, dtype=torch.float16 if precision == "fp16" else torch.bfloat16)
    return contextlib.nullcontext()


def evaluate_mlm(model, text: MaskedText, block_size: int, tokenizer, *, batch_size: int = 1,
                 device=None, precision: str = "fp32") -> dict[str, float]:
    """Masked-LM metrics of `model` on `text` cut into blocks of `block_size` (see `mlm_metrics`).

    The loss is summed over every masked token and divided once, so it is the mean over masked tokens
    (not a mean of per-batch means, which is what Trainer.evaluate's eval_loss reports)."""
    import torch
    import torch.nn.functional as F

    cls_id, sep_id, pad_id, _ = special_ids(tokenizer)
    device = device or next(model.parameters()).device
    blocks = [b for b in text.blocks(block_size, cls_id, sep_id) if (b[1] != -100).any()]
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    masked = 0
    try:
        with torch.no_grad():
            for i in range(0, len(blocks), batch_size):
                chunk = blocks[i:i + batch_size]
                width = max(len(ids) for ids, _ in chunk)
                ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
                labels = torch.full((len(chunk), width), -100, dtype=torch.long)
                attention = torch.zeros((len(chunk), width), dtype=torch.long)
                for r, (a, b) in enumerate(chunk):
                    ids[r, :len(a)] = torch.from_numpy(a)
                    labels[r, :len(b)] = torch.from_numpy(b)
                    attention[r, :len(a)] = 1
                ids, labels, attention = ids.to(device), labels.to(device), attention.to(device)
                with _autocast(device, precision):
                    logits = model(input_ids=ids, attention_mask=attention).logits
                sel = labels != -100
                loss_sum += F.cross_entropy(logits[sel].float(), labels[sel], reduction="sum").double()
                masked += int(sel.sum())
    finally:
        model.train(was_training)
    metrics = mlm_metrics(float(loss_sum), masked, text.text_tokens, text.characters)
    metrics["block_size"] = block_size
    metrics["blocks"] = len(blocks)
    return metrics


# ------------------------------------------------------------------------------------------ trainer


def mlm_loss(outputs, labels, num_items_in_batch=None):
    """Masked-token cross-entropy summed over a micro-batch and divided by the masked tokens of the whole
    optimizer step (`num_items_in_batch`), so accumulated micro-batches add up to the step's token mean.

    Passed to the Trainer as `compute_loss_func` because LongformerForMaskedLM's forward takes `**kwargs`,
    which tells the Trainer (transformers 5) that the model scales its loss by `num_items_in_batch`, but it
    ignores it and returns each micro-batch's mean: the Trainer then skips its own division by the
    accumulation steps, and the logged loss and the gradient come out `gradient_accumulation_steps` times
    too large. Only masked positions are taken from the logits (cheaper than a full-vocabulary pass)."""
    import torch
    import torch.nn.functional as F

    logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
    labels = labels.to(logits.device)
    sel = labels != -100
    total = F.cross_entropy(logits[sel].float(), labels[sel], reduction="sum")
    count = num_items_in_batch if num_items_in_batch is not None else sel.sum()
    if torch.is_tensor(count):
        return total / count.to(total.device).clamp(min=1)
    return total / max(int(count), 1)


def _trainer_class():
    from transformers import Trainer, TrainerCallback

    class MLMTrainer(Trainer):
        """Trainer whose evaluation is `evaluate_mlm` on the fixed-mask evaluation text (exact token mean,
        bits per token and per character), logged like Trainer.evaluate's metrics."""

        eval_fn: Callable[[Any], dict[str, float]]

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
            result = self.eval_fn(self.model)
            metrics = {f"{metric_key_prefix}_{k}": float(result[k])
                       for k in ("loss", "perplexity", "bits_per_token", "bits_per_character")}
            self.log(metrics)
            log.info("step %d: eval loss %.4f, %.4f bits/token, %.4f bits/character", self.state.global_step,
                     result["loss"], result["bits_per_token"], result["bits_per_character"])
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics

    class EpochCallback(TrainerCallback):
        """Tell the training blocks which epoch starts (state.epoch is whole at an epoch start and, after a
        resume, the fractional epoch of the checkpoint: its floor is the epoch being resumed)."""

        def __init__(self, dataset: MaskedBlocks):
            self.dataset = dataset

        def on_epoch_begin(self, args, state, control, **kwargs):
            self.dataset.epoch = int(math.floor((state.epoch or 0.0) + 1e-9))

    return MLMTrainer, EpochCallback


def _check_resume_config(out: Path, config: dict[str, Any]) -> None:
    stored_path = out / "config.json"
    if not stored_path.is_file():
        return
    stored = read_json(stored_path, "resolved config")
    if "max_pos" in stored and "block_size" not in stored:  # a run from before the rename
        stored["block_size"] = stored.pop("max_pos")
    ignore = {"resume", "force"}
    changed = [k for k in config if k not in ignore and k in stored and stored[k] != config[k]]
    fixed = [k for k in changed if k in _RESUME_FIXED]
    if fixed:
        raise LongctxError(f"{stored_path}: cannot resume with a different {', '.join(fixed)} "
                           f"(was {', '.join(repr(stored[k]) for k in fixed)}); start a new run instead")
    if changed:
        log.warning("resuming with changed %s (was %s)", ", ".join(changed),
                    ", ".join(repr(stored[k]) for k in changed))


def check_values(**v: Any) -> None:
    """The checks pretrain runs before any work (all its fields; public: a sweep runs them when it plans)."""
    if not 0 < v["mlm_probability"] < 1:
        raise LongctxError(f"field 'mlm_probability': {v['mlm_probability']} must be between 0 and 1")
    for name in ("max_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "eval_steps",
                 "save_steps", "logging_steps", "source_max_len"):
        if v[name] < 1:
            raise LongctxError(f"field '{name}': {v[name]} must be at least 1")
    for name in ("learning_rate", "warmup_steps", "weight_decay"):
        if v[name] < 0:
            raise LongctxError(f"field '{name}': {v[name]} must not be negative")
    if v["max_eval_blocks"] is not None and v["max_eval_blocks"] < 1:
        raise LongctxError(f"field 'max_eval_blocks': {v['max_eval_blocks']} must be at least 1")
    for f in list(v["train_file"] or []) + ([v["eval_file"]] if v["eval_file"] else []):
        if Path(f).is_dir():
            raise LongctxError(f"{f}: is a folder, expected a WikiText raw text file (e.g. wiki.train.raw)")
        if not Path(f).is_file():
            raise LongctxError(f"{f}: WikiText file not found")
    if not v["train_file"] and not v["dataset"]:
        raise LongctxError("no training text: pass --train-file (WikiText wiki.train.raw files) or --dataset "
                           "(a hub name, e.g. wikitext for wikitext-103-raw-v1)")
    if not v["eval_file"] and not v["dataset"]:
        raise LongctxError("no evaluation text: pass --eval-file (e.g. wiki.valid.raw) or --dataset")


def pretrain(
    *,
    model: str,
    out: str,
    train_file: list[str] | None = None,
    eval_file: str | None = None,
    dataset: str | None = None,
    block_size: int | None = None,
    packing: Literal["concat", "article"] = "concat",
    mlm_probability: float = 0.15,
    learning_rate: float = 3e-5,
    warmup_steps: int = 500,
    weight_decay: float = 0.01,
    max_steps: int = 6000,
    per_device_train_batch_size: int = 1,
    gradient_accumulation_steps: int = 64,
    eval_steps: int = 500,
    save_steps: int = 500,
    save_total_limit: int | None = 2,
    logging_steps: int = 50,
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto",
    gradient_checkpointing: bool = False,
    recopy_global: bool = True,
    mlm_head: Literal["auto", "require"] = "auto",
    source_model: str | None = None,
    source_max_len: int = 512,
    fast_attention: bool = True,
    seed: int = 42,
    resume: bool = False,
    force: bool = False,
    max_eval_blocks: int | None = None,
    max_pos: int | None = None,
) -> dict[str, Any]:
    """Continue MLM pretraining of a converted Longformer on WikiText (Longformer's recipe).

    Args:
        model: converted model folder (from `longctx convert`) with its tokenizer and MLM head (see mlm_head).
        out: output folder: checkpoints/, tensorboard/, model/ (final), metrics.json, run.json, config.json.
        train_file: WikiText raw training file(s) (wiki.train.raw); articles start at ' = Title = ' lines.
        eval_file: WikiText raw evaluation file (wiki.valid.raw); default: the dataset's validation split.
        dataset: hub dataset for the text that has no file: wikitext (= wikitext-103-raw-v1),
            wikitext-2-raw-v1 or repo:config with a 'text' column of lines (train and validation splits);
            none: files only.
        block_size: tokens per training and evaluation block (cls and sep included); default: all of the
            model's positions.
        packing: concat: articles end to end with a separator, full blocks (RoBERTa FULL-SENTENCES);
            article: blocks never cross an article boundary (more padding).
        mlm_probability: fraction of tokens to predict (of those, 8 in 10 become the mask token, 1 in 10 a
            random token, 1 in 10 stay unchanged).
        learning_rate: peak learning rate (AdamW, linear warmup then linear decay to 0 at max_steps).
        warmup_steps: optimizer steps of linear warmup.
        weight_decay: AdamW weight decay.
        max_steps: optimizer steps to train.
        per_device_train_batch_size: blocks per forward pass (also used for evaluation).
        gradient_accumulation_steps: forward passes per optimizer step.
        eval_steps: evaluate every this many optimizer steps.
        save_steps: save a resumable checkpoint every this many optimizer steps.
        save_total_limit: checkpoints kept in out/checkpoints (oldest deleted); 0 keeps all.
        logging_steps: log the training loss every this many optimizer steps.
        precision: auto (bf16 where the GPU or CPU computes it natively, fp16 on older GPUs, else fp32),
            fp32, fp16 (GPU only) or bf16 mixed precision.
        gradient_checkpointing: recompute activations in the backward pass (for 4096 x base models on
            small GPUs).
        recopy_global: after training, copy the trained query/key/value into the global projections
            (MLM never trains them); --no-recopy-global keeps them as they were.
        mlm_head: auto: the checkpoint's MLM head, or, for a model without one (a sentence encoder such as
            MiniLM, or converted from one), a fresh head tied to the input embeddings (the family's
            initialisation otherwise), with a notice; metrics.json's before.converted.mlm_head says which.
            require: fail without one.
        source_model: model for the before-training comparison; default: the model the folder was
            converted from; none: skip the comparison (skipped too when the MLM head is new).
        source_max_len: block size for the source model in that comparison (at most its positions).
        fast_attention: longctx's kernels: exact SDPA sliding-window attention for Longformer, and on CPU
            dropout (attention dropout too) from cheap masks, same distribution (longctx.fastcpu); off:
            transformers' own.
        seed: seed for initialisation order, data order and training masks.
        resume: continue from the last checkpoint in out/checkpoints.
        force: start over in a non-empty output folder (removes an earlier run's outputs there).
        max_eval_blocks: evaluate only on the text covered by the first this many blocks.
        max_pos: deprecated name of block_size (accepted for one release, with a warning).

    Example:
        longctx pretrain --model models/roberta-long --out runs/roberta-long-mlm --max-steps 3000
    """
    names = inspect.signature(pretrain).parameters
    config = _normalised(resolved_config(pretrain, {k: v for k, v in locals().items() if k in names}))
    logging.getLogger("longctx").setLevel(logging.INFO)
    check_values(**config)
    started = time.perf_counter()
    from transformers import set_seed

    out_dir = Path(out)
    text = _read_text(config)  # data first: a bad file costs no model load and leaves no output folder
    checkpoint = _setup_output(out_dir, resume=resume, force=force)
    resolved_precision = resolve_precision(precision)
    set_seed(seed)
    mlm, tokenizer, head = _setup_model(config, out_dir)
    data = _setup_data(config, tokenizer, text)
    meta = run_metadata(config, seed, precision=resolved_precision)
    write_json(out_dir / "config.json", config)
    write_json(out_dir / "run.json", meta)
    trainer = _setup_trainer(config, mlm, tokenizer, data, out_dir, resolved_precision)

    before = _evaluate_before(config, trainer, tokenizer, data, out_dir, resolved_precision.name, head)
    metrics: dict[str, Any] = {"status": "training", "before": before,
                               "uniform_bits_per_token": math.log2(len(tokenizer)), "data": data.info, **meta}
    write_json(out_dir / "metrics.json", metrics)

    result, train_seconds = _train(trainer, before, checkpoint)
    recopied = _save(config, trainer, tokenizer, data, out_dir, head)
    after = {"trained": {"model": str(out_dir / "model"), **trainer.eval_fn(trainer.model)}}

    metrics.update(status="done", after=after,
                   train=_train_record(config, trainer, result, train_seconds, checkpoint, resolved_precision,
                                       recopied),
                   log_history=trainer.state.log_history)
    write_json(out_dir / "metrics.json", metrics)
    b, a = before["converted"], after["trained"]
    log.info("after %d steps: eval loss %.4f -> %.4f, %.4f -> %.4f bits/token, %.4f -> %.4f bits/character "
             "(%.0f s) -> %s", trainer.state.global_step, b["loss"], a["loss"], b["bits_per_token"],
             a["bits_per_token"], b["bits_per_character"], a["bits_per_character"],
             time.perf_counter() - started, out_dir / "model")
    return metrics


# ------------------------------------------------------------------------------------------ the steps


def _normalised(config: dict[str, Any]) -> dict[str, Any]:
    """The resolved config with command-line spellings settled: one train file as a list, a dataset
    switched off as None, and the deprecated `max_pos` folded into `block_size`."""
    if isinstance(config["train_file"], str):
        config["train_file"] = [config["train_file"]]
    if config["dataset"] is not None and config["dataset"].strip().lower() in ("", "none", "null"):
        config["dataset"] = None  # a recipe's dataset switched off from the command line
    old = config.pop("max_pos")
    if old is not None:
        if config["block_size"] is not None and config["block_size"] != old:
            raise LongctxError(f"fields 'block_size' ({config['block_size']}) and 'max_pos' ({old}) disagree: "
                               f"max_pos is the deprecated name of block_size, give only block_size")
        log.warning("field 'max_pos' of pretrain is deprecated: it is now 'block_size' (tokens per block)")
        config["block_size"] = old
    return config


def _setup_output(out_dir: Path, *, resume: bool, force: bool) -> str | None:
    """The checkpoint to resume from (None for a new run); a new run gets a clean output folder."""
    if resume:  # the newest complete checkpoint (torn ones are skipped: see longctx.checkpoints)
        return str(resume_checkpoint(out_dir / "checkpoints", out_dir).path)
    has_run = (out_dir / "checkpoints").is_dir() and any((out_dir / "checkpoints").iterdir())
    if has_run and not force:
        raise LongctxError(f"{out_dir}: holds checkpoints of an earlier run: pass --resume to continue it "
                           f"or --force to start over")
    prepare_output_dir(out_dir, force=force)
    for name in _OUR_OUTPUTS if force else ():  # --force: an earlier run's outputs go, nothing else
        p = out_dir / name
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
    return None


def _setup_model(config: dict[str, Any], out_dir: Path):
    """(masked LM, tokenizer, MLM head: "loaded" or "new") to train; settles `block_size` and `source_model`
    in `config`."""
    import torch

    model = config["model"]
    try:
        mlm, tokenizer, has_head = load_mlm(model, "model", new_head=config["mlm_head"] == "auto",
                                            dtype=torch.float32, fast_attention=config["fast_attention"])
    except LongctxError as e:
        if config["mlm_head"] != "require" or "no MLM head" not in str(e):
            raise
        raise LongctxError(f"{e}; --mlm-head auto starts a fresh head") from None
    head = "loaded" if has_head else "new"
    if head == "new" and config["resume"]:
        log.info("%s has no MLM head: the resumed checkpoint's trained head replaces the fresh one", model)
    elif head == "new":
        log.warning("%s has no MLM head: starting a fresh one (decoder tied to the input embeddings); the 'before' "
                    "loss is an untrained head's, not the source's MLM quality", model)
    special_ids(tokenizer)  # a tokenizer without cls/sep/pad/mask fails here, before any data work
    limit = model_max_tokens(mlm.config)
    if config["block_size"] is None:
        config["block_size"] = limit
    elif config["block_size"] > limit:
        raise LongctxError(f"{model}: block_size {config['block_size']} is more than the model's {limit} positions")
    if mlm.config.model_type != "longformer":
        log.warning("%s is a %s, not a converted Longformer: training it as is", model, mlm.config.model_type)
    source_model = config["source_model"]
    if source_model is None:
        source_model = (getattr(mlm.config, "longctx", None) or {}).get("converted_from")
    if source_model is not None and str(source_model).lower() == "none":
        source_model = None
    config["source_model"] = source_model
    if config["resume"]:
        _check_resume_config(out_dir, config)
    return mlm, tokenizer, head


@dataclass
class _Data:
    train: MaskedBlocks
    eval_text: MaskedText
    train_label: str
    info: dict[str, Any]  # statistics recorded in metrics.json["data"]


def _read_text(config: dict[str, Any]) -> tuple[list, str, list, str]:
    """(eval articles, their label, train articles, their label): files first; the hub dataset supplies
    whichever of the two has no file. Read before the model loads, so bad text fails before any work."""
    eval_file, dataset = config["eval_file"], config["dataset"]
    eval_articles, eval_label = wikitext.load_articles([eval_file] if eval_file else None, dataset,
                                                       split="validation")
    train_articles, train_label = wikitext.load_articles(config["train_file"], dataset, split="train")
    return eval_articles, eval_label, train_articles, train_label


def _setup_data(config: dict[str, Any], tokenizer, text: tuple[list, str, list, str]) -> _Data:
    """Articles (`_read_text`) -> tokens -> blocks of `block_size`: masked training blocks and the
    fixed-mask eval text."""
    block_size, packing = config["block_size"], config["packing"]
    eval_articles, eval_label, train_articles, train_label = text
    t0 = time.perf_counter()
    train_tokens = wikitext.tokenize_articles(train_articles, tokenizer, source=train_label)
    eval_tokens = wikitext.tokenize_articles(eval_articles, tokenizer, source=eval_label)
    _, sep_id, _, _ = special_ids(tokenizer)
    train_stream = wikitext.make_stream(train_tokens, sep_id, packing)
    train_spans = wikitext.block_spans(train_stream, block_size)
    train_waste = wikitext.padding_waste(train_spans, block_size)
    train_set = MaskedBlocks(train_stream, train_spans, tokenizer, config["mlm_probability"], config["seed"])
    eval_text = masked_eval_text(eval_tokens, tokenizer, block_size=block_size, packing=packing,
                                 mlm_probability=config["mlm_probability"], max_blocks=config["max_eval_blocks"])
    eval_spans = wikitext.block_spans(eval_text.stream, block_size)
    log.info("train: %s: %d articles, %d tokens, %d blocks of %d (%s packing, %.2f%% padding), tokenized in %.1f s",
             train_label, len(train_tokens.ids), train_tokens.n_tokens, len(train_spans), block_size, packing,
             100 * train_waste, time.perf_counter() - t0)
    log.info("eval: %s: %d articles, %d tokens, %d characters (%.3f tokens/character), %d masked, %d blocks",
             eval_label, eval_text.articles, eval_text.text_tokens, eval_text.characters,
             eval_text.text_tokens / eval_text.characters, eval_text.masked_tokens, len(eval_spans))
    blocks_per_step = config["per_device_train_batch_size"] * config["gradient_accumulation_steps"]
    info = {
        "train": {"source": train_label, "articles": len(train_tokens.ids), "tokens": train_tokens.n_tokens,
                  "characters": train_tokens.n_chars, "blocks": len(train_spans), "padding_waste": train_waste,
                  "epochs": config["max_steps"] * blocks_per_step / len(train_spans)},
        "eval": {"source": eval_label, "articles": eval_text.articles, "tokens": eval_text.text_tokens,
                 "characters": eval_text.characters,
                 "tokens_per_character": eval_text.text_tokens / eval_text.characters,
                 "masked_tokens": eval_text.masked_tokens, "mask_seed": EVAL_MASK_SEED,
                 "blocks": len(eval_spans), "padding_waste": wikitext.padding_waste(eval_spans, block_size)},
        "packing": packing, "block_size": block_size, "tokens_per_step": blocks_per_step * block_size,
    }
    return _Data(train=train_set, eval_text=eval_text, train_label=train_label, info=info)


def _setup_trainer(config: dict[str, Any], mlm, tokenizer, data: _Data, out_dir: Path, precision: Precision):
    """The MLM Trainer (checkpoints, schedule, TensorBoard); its `eval_fn` scores a model on the eval text."""
    from transformers import DataCollatorForTokenClassification, TrainingArguments

    c = config
    args = TrainingArguments(
        output_dir=str(out_dir / "checkpoints"),
        max_steps=c["max_steps"],
        learning_rate=c["learning_rate"],
        warmup_steps=c["warmup_steps"],
        weight_decay=c["weight_decay"],
        lr_scheduler_type="linear",
        per_device_train_batch_size=c["per_device_train_batch_size"],
        per_device_eval_batch_size=c["per_device_train_batch_size"],
        gradient_accumulation_steps=c["gradient_accumulation_steps"],
        eval_strategy="steps",
        eval_steps=c["eval_steps"],
        save_strategy="steps",
        save_steps=c["save_steps"],
        save_total_limit=c["save_total_limit"] or None,
        logging_strategy="steps",
        logging_steps=c["logging_steps"],
        fp16=precision.name == "fp16",
        bf16=precision.name == "bf16",
        use_cpu=precision.device == "cpu",
        activation_checkpointing=c["gradient_checkpointing"],  # transformers 5's name for gradient checkpointing
        activation_checkpointing_kwargs={"use_reentrant": False} if c["gradient_checkpointing"] else None,
        seed=c["seed"],
        data_seed=c["seed"],
        dataloader_num_workers=0,  # training masks are set per epoch on the dataset object (see MaskedBlocks)
        report_to="none",  # TensorBoard is added below with its folder set to out/tensorboard
    )
    device = args.device
    mlm.to(device)
    block_size = c["block_size"]
    cls_id, sep_id, _, _ = special_ids(tokenizer)
    MLMTrainer, EpochCallback = _trainer_class()
    trainer = MLMTrainer(
        model=mlm, args=args, train_dataset=data.train,
        eval_dataset=[{"input_ids": i, "labels": lab} for i, lab in data.eval_text.blocks(block_size, cls_id, sep_id)],
        data_collator=DataCollatorForTokenClassification(tokenizer, label_pad_token_id=-100),
        processing_class=tokenizer, callbacks=[tensorboard_callback(out_dir / "tensorboard"), EpochCallback(data.train)],
        compute_loss_func=mlm_loss)
    trainer.eval_fn = lambda m: evaluate_mlm(m, data.eval_text, block_size, tokenizer,
                                             batch_size=c["per_device_train_batch_size"], device=device,
                                             precision=precision.name)
    return trainer


def _evaluate_before(config: dict[str, Any], trainer, tokenizer, data: _Data, out_dir: Path,
                     precision: str, head: str) -> dict[str, Any]:
    """The source at its own length and the converted model at block_size, on the same masked text.

    `converted.mlm_head` records whether the model's MLM head was loaded or is new. A new head has learnt
    nothing yet, so its loss says nothing about the source's MLM quality and the source comparison is
    skipped. A resumed run keeps the first run's numbers unless the evaluation text changed since."""
    metrics_path = out_dir / "metrics.json"
    previous = read_json(metrics_path, "metrics") if config["resume"] and metrics_path.is_file() else {}
    before = previous.get("before")
    if before is not None and previous.get("data", {}).get("eval") != data.info["eval"]:
        before = None  # the evaluation text changed since: compare on the new one
    if before is None:
        before = {"converted": {"model": config["model"], "mlm_head": head, **trainer.eval_fn(trainer.model)}}
        if head == "new":
            before["converted"]["note"] = "fresh MLM head: an untrained head's loss, not the source's MLM quality"
            if config["source_model"]:
                log.info("source comparison skipped: the MLM head is new, so the two losses are not comparable")
        elif config["source_model"]:
            before["source"] = _evaluate_source(config["source_model"], trainer.model.config, data.eval_text,
                                                tokenizer, config["source_max_len"],
                                                config["per_device_train_batch_size"], trainer.args.device,
                                                precision)
    _log_before(before, math.log2(len(tokenizer)))
    return before


def _train(trainer, before: dict[str, Any], checkpoint: str | None):
    """(TrainOutput, seconds): train, or continue from `checkpoint`."""
    if checkpoint is None:  # the step-0 point of the eval curves
        trainer.log({f"eval_{k}": float(before["converted"][k])
                     for k in ("loss", "perplexity", "bits_per_token", "bits_per_character")})
    else:  # transformers may list lm_head.decoder.* as missing: they are tied, restored from the embeddings
        log.info("resuming from %s", checkpoint)
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    return result, time.perf_counter() - t0


def _save(config: dict[str, Any], trainer, tokenizer, data: _Data, out_dir: Path, head: str) -> int:
    """Re-copy the global projections (unless switched off), record the training in the model's config
    and save model and tokenizer to out/model; returns the layers re-copied."""
    model = trainer.model
    recopied = copy_global_projections(model) if config["recopy_global"] else 0
    model.config.longctx = {**(getattr(model.config, "longctx", None) or {}),
                            "pretrained": {"from": config["model"], "steps": trainer.state.global_step,
                                           "block_size": config["block_size"], "data": data.train_label,
                                           "mlm_head": head,
                                           "global_projections": "recopied" if recopied else "kept"}}
    _save_model(model, tokenizer, out_dir / "model", config["block_size"])
    return recopied


def _train_record(config: dict[str, Any], trainer, result, seconds: float, checkpoint: str | None,
                  precision: Precision, recopied: int) -> dict[str, Any]:
    """metrics.json["train"]: how far training got and how it ran."""
    losses = [h for h in trainer.state.log_history if "loss" in h and "eval_loss" not in h]
    return {"global_step": trainer.state.global_step, "max_steps": config["max_steps"],
            "last_logged_loss": losses[-1]["loss"] if losses else None,
            "last_logged_step": losses[-1]["step"] if losses else None,
            "train_loss_this_run": result.training_loss, "seconds_this_run": seconds,
            "resumed_from": checkpoint, "device": str(trainer.args.device), "precision": precision.name,
            "precision_reason": precision.reason, "fast_attention": uses_fast_attention(trainer.model),
            "gradient_checkpointing": config["gradient_checkpointing"],
            "global_projections": "recopied" if recopied else "kept", "recopied_layers": recopied}


def _evaluate_source(source_model: str, long_config, text: MaskedText, tokenizer, source_max_len: int,
                     batch_size: int, device, precision: str) -> dict[str, Any]:
    """The source model's metrics at min(source_max_len, its positions) on the same masked text."""
    import torch

    try:
        source, _, _ = load_mlm(source_model, "source model", dtype=torch.float32)
    except LongctxError as e:
        raise LongctxError(f"{e} (pass --source-model PATH, or --source-model none to skip the comparison)") from None
    if source.config.vocab_size != long_config.vocab_size:
        raise LongctxError(f"{source_model}: vocabulary of {source.config.vocab_size} differs from the model's "
                           f"{long_config.vocab_size}: not the source of this model")
    length = min(source_max_len, model_max_tokens(source.config))
    if length < source_max_len:
        log.info("source %s has %d positions: evaluating it at %d", source_model, length, length)
    source.to(device)
    result = evaluate_mlm(source, text, length, tokenizer, batch_size=max(1, batch_size), device=device,
                          precision=precision)
    del source
    return {"model": source_model, **result}


def _log_before(before: dict[str, Any], uniform: float) -> None:
    c = before["converted"]
    s = before.get("source")
    if s is None:
        log.info("before: converted@%d %.4f bits/token, %.4f bits/character (uniform guess: %.2f bits/token)",
                 c["block_size"], c["bits_per_token"], c["bits_per_character"], uniform)
        return
    log.info("before: source@%d %.4f bits/token (%.4f bits/char), converted@%d %.4f bits/token (%.4f bits/char); "
             "uniform guess %.2f bits/token", s["block_size"], s["bits_per_token"], s["bits_per_character"],
             c["block_size"], c["bits_per_token"], c["bits_per_character"], uniform)
    margin = uniform - s["bits_per_token"]  # how much the source knows (about 0 for a random tiny model)
    if margin > 1.0 and c["bits_per_token"] - s["bits_per_token"] > 0.5 * margin:
        log.warning("the converted model is closer to a uniform guess than to its source: check the conversion")


def _save_model(model, tokenizer, folder: Path, block_size: int) -> None:
    """save_pretrained into a `.incomplete-*` sibling, then rename: a crash never leaves a half-written model/."""
    with staged_folder(folder) as staged:
        with quiet_transformers():
            model.save_pretrained(staged, safe_serialization=True)
        tokenizer.model_max_length = block_size
        tokenizer.save_pretrained(staged)
