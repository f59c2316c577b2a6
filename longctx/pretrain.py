"""MLM continuation pretraining of a converted Longformer (Beltagy et al. 2020, section 5) on the HF Trainer.

Flow: load the converted folder (`longctx convert`), read WikiText raw text as articles and pack it into
blocks of `max_pos` tokens (`longctx.data.wikitext`), evaluate the source model at 512 tokens and the
converted model at `max_pos` on the same masked text (the paper's sanity check: converted ~ source, far
from a random model), train with 15% dynamic masking, re-copy the global projections from the trained
local ones, save an ordinary Longformer checkpoint to `out/model` and evaluate it again.

Metrics (all on the same evaluation text and the same masks):

* `loss`: mean cross-entropy (nats) over the masked tokens; `perplexity` = exp(loss).
* `bits_per_token` = loss / ln 2. The thesis reported this number as "BPC"; it is bits per *token*.
* `bits_per_character` = loss x tokens / characters / ln 2. With MLM only ~15% of the tokens carry a
  loss, so the total loss over the evaluation text is estimated as the mean masked-token loss times the
  text's token count: the per-token loss rescaled by the text's tokens per character.
  `tokens` are the text's tokens (no cls/sep/separators), `characters` the characters of exactly the text
  that was tokenized (WikiText raw, newlines included; cut at the last evaluated token with
  `max_eval_blocks`).

Evaluation masks are drawn once over the whole token stream with a fixed seed (`EVAL_MASK_SEED`, the same
for every run and every block size), so the source at 512, the converted model at `max_pos` and the trained
model are scored on identical masked tokens. Training masks are redrawn every epoch (RoBERTa's dynamic
masking) from (seed, epoch, block index) rather than from the global RNG, so a resumed run masks every
batch exactly as the uninterrupted run would (the Trainer restores the global RNG only after it has
already collated the first batch after a resume).

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

import numpy as np

from longctx.common import (LongctxError, log, prepare_output_dir, read_json, run_metadata,
                            tensorboard_callback, write_json)
from longctx.config import resolved_config
from longctx.precision import resolve_precision
from longctx.data import wikitext

LN2 = math.log(2)
EVAL_MASK_SEED = 20200410  # fixed for every run: evaluations of different runs use identical masks

# Fields that must not change when resuming: they define the data order, the masks or the model.
_RESUME_FIXED = ("model", "train_file", "dataset", "max_pos", "packing", "mlm_probability", "seed",
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


# ----------------------------------------------------------------------------------------------- data


def _special_ids(tokenizer) -> tuple[int, int, int, int]:
    ids = (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id, tokenizer.mask_token_id)
    missing = [n for n, i in zip(("cls", "sep", "pad", "mask"), ids) if i is None]
    if missing:
        raise LongctxError(f"{tokenizer.name_or_path}: tokenizer has no {', '.join(missing)} token; "
                           f"MLM pretraining needs cls, sep, pad and mask")
    return ids  # type: ignore[return-value]


def _masker(tokenizer, mlm_probability: float):
    """The library's 80/10/10 masking (`torch_mask_tokens`), driven by generators we seed ourselves."""
    from transformers import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=mlm_probability)


def _mask(masker, ids, special, seed: int):
    import torch

    masker.generator = torch.Generator().manual_seed(int(seed))
    inputs, labels = masker.torch_mask_tokens(ids.clone(), special_tokens_mask=special)
    return inputs, labels


def _item_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] >> 1)


class MaskedBlocks:
    """Training blocks, masked afresh in each epoch from (seed, epoch, index) (see the module docstring).

    A map-style dataset (`__len__`/`__getitem__`); `epoch` is set by `_EpochCallback` at each epoch start."""

    def __init__(self, stream: wikitext.TokenStream, spans: list[tuple[int, int]], tokenizer,
                 mlm_probability: float, seed: int):
        import torch

        self.stream, self.spans, self.seed, self.epoch = stream, spans, seed, 0
        self.cls, self.sep, _, _ = _special_ids(tokenizer)
        self.special = torch.tensor(sorted(set(tokenizer.all_special_ids)))
        self.masker = _masker(tokenizer, mlm_probability)

    def __len__(self) -> int:
        return len(self.spans)

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        s, e = self.spans[i]
        ids = torch.from_numpy(wikitext.with_specials(self.stream.ids[s:e], self.cls, self.sep))[None]
        inputs, labels = _mask(self.masker, ids, torch.isin(ids, self.special), _item_seed(self.seed, self.epoch, i))
        return {"input_ids": inputs[0], "attention_mask": torch.ones_like(inputs[0]), "labels": labels[0]}


@dataclass
class MaskedText:
    """An evaluation text whose masks were drawn once over its token stream: cutting it into blocks of
    any size gives the same masked tokens."""

    stream: wikitext.TokenStream
    input_ids: np.ndarray
    labels: np.ndarray
    text_tokens: int
    characters: int
    articles: int
    source: str

    @property
    def masked_tokens(self) -> int:
        return int((self.labels != -100).sum())

    def blocks(self, block_size: int, cls_id: int, sep_id: int) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        for s, e in wikitext.block_spans(self.stream, block_size):
            out.append((wikitext.with_specials(self.input_ids[s:e], cls_id, sep_id),
                        np.concatenate([[-100], self.labels[s:e], [-100]]).astype(np.int64)))
        return out


def masked_eval_text(tokens: wikitext.TokenizedArticles, tokenizer, *, block_size: int, packing: str,
                     mlm_probability: float, max_blocks: int | None = None, seed: int = EVAL_MASK_SEED) -> MaskedText:
    """Mask an evaluation text once (fixed seed), optionally keeping only what its first `max_blocks`
    blocks of `block_size` cover."""
    import torch

    cls_id, sep_id, _, _ = _special_ids(tokenizer)
    stream = wikitext.make_stream(tokens, sep_id, packing)  # type: ignore[arg-type]
    if max_blocks is not None:
        spans = wikitext.block_spans(stream, block_size)
        if len(spans) > max_blocks:
            tokens = tokens.prefix(wikitext.prefix_counts(stream, spans[max_blocks - 1][1]), tokenizer)
            stream = wikitext.make_stream(tokens, sep_id, packing)  # type: ignore[arg-type]
    ids = torch.from_numpy(stream.ids.astype(np.int64))[None]
    special = torch.isin(ids, torch.tensor(sorted(set(tokenizer.all_special_ids)))) | \
        torch.from_numpy(stream.separator)[None]
    inputs, labels = _mask(_masker(tokenizer, mlm_probability), ids, special, seed)
    text = MaskedText(stream=stream, input_ids=inputs[0].numpy(), labels=labels[0].numpy(),
                      text_tokens=tokens.n_tokens, characters=tokens.n_chars, articles=len(tokens.ids),
                      source=tokens.source)
    if text.masked_tokens == 0:
        raise LongctxError(f"{tokens.source}: evaluation text too short: no token was masked")
    return text


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

    cls_id, sep_id, pad_id, _ = _special_ids(tokenizer)
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


# ------------------------------------------------------------------------------------------- models


@contextlib.contextmanager
def _quiet_transformers():
    """Load reports and progress bars of from_pretrained are noise here; errors still surface."""
    import transformers

    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(level)


def _load_mlm(model: str, what: str):
    """(AutoModelForMaskedLM, tokenizer) from a folder or hub name, with one-line errors."""
    import torch
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

    # 'owner/name' may be a hub repository; './x', '/x', '~/x' or 'a/b/c' can only be folders.
    looks_local = Path(model).exists() or model.startswith((".", "/", "~")) or model.count("/") > 1
    if looks_local and not Path(model).is_dir():
        raise LongctxError(f"{model}: {what} not found")
    try:
        AutoConfig.from_pretrained(model)
        tokenizer = AutoTokenizer.from_pretrained(model)
    except (OSError, ValueError) as e:
        where = "folder has no usable config/tokenizer" if looks_local else "not found locally or on the hub"
        raise LongctxError(f"{model}: {what} {where} ({str(e).strip().splitlines()[0][:160]})") from None
    with _quiet_transformers():
        try:
            mlm, info = AutoModelForMaskedLM.from_pretrained(model, output_loading_info=True, dtype=torch.float32)
        except (OSError, ValueError) as e:
            raise LongctxError(f"{model}: cannot load the {what} as a masked LM "
                               f"({str(e).strip().splitlines()[0][:160]})") from None
    head = [k for k in info.get("missing_keys", []) if k.startswith(("lm_head.", "cls."))
            and not k.endswith("decoder.weight")]  # the decoder weight is tied to the embeddings
    if head:
        raise LongctxError(f"{model}: the {what} has no MLM head (missing {head[0]}; converted from a bare "
                           f"encoder?): MLM pretraining starts from the source's MLM head")
    return mlm, tokenizer


def _enable_fast_attention(model) -> bool:
    if model.config.model_type != "longformer":
        return False
    try:
        from longctx.attention import enable
    except ImportError as e:  # the module is optional: transformers' attention computes the same function
        log.info("fast attention unavailable (%s); using transformers' Longformer attention", e)
        return False
    enable(model)
    return True


def recopy_global_projections(model) -> int:
    """Copy each layer's trained query/key/value into query_global/key_global/value_global; returns layers.

    MLM pretraining never uses global attention, so the global projections get no gradient; Longformer
    starts them as copies of the local ones, and re-copying keeps them that way after training."""
    import torch

    names = ("query", "key", "value")
    n = 0
    with torch.no_grad():
        for module in model.modules():
            if all(hasattr(module, p) and hasattr(module, p + "_global") for p in names):
                for p in names:
                    local, glob = getattr(module, p), getattr(module, p + "_global")
                    glob.weight.copy_(local.weight)
                    glob.bias.copy_(local.bias)
                n += 1
    return n




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


def _last_checkpoint(out: Path) -> str:
    from transformers.trainer_utils import get_last_checkpoint

    folder = out / "checkpoints"
    last = get_last_checkpoint(str(folder)) if folder.is_dir() else None
    if last is None:
        raise LongctxError(f"{out}: nothing to resume (no checkpoint-* folder in {folder}); run without --resume")
    return last


def _check_resume_config(out: Path, config: dict[str, Any]) -> None:
    stored_path = out / "config.json"
    if not stored_path.is_file():
        return
    stored = read_json(stored_path, "resolved config")
    ignore = {"resume", "force"}
    changed = [k for k in config if k not in ignore and k in stored and stored[k] != config[k]]
    fixed = [k for k in changed if k in _RESUME_FIXED]
    if fixed:
        raise LongctxError(f"{stored_path}: cannot resume with a different {', '.join(fixed)} "
                           f"(was {', '.join(repr(stored[k]) for k in fixed)}); start a new run instead")
    if changed:
        log.warning("resuming with changed %s (was %s)", ", ".join(changed),
                    ", ".join(repr(stored[k]) for k in changed))


def _check_values(**v: Any) -> None:
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
    max_pos: int | None = None,
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
    source_model: str | None = None,
    source_max_len: int = 512,
    fast_attention: bool = True,
    seed: int = 42,
    resume: bool = False,
    force: bool = False,
    max_eval_blocks: int | None = None,
) -> dict[str, Any]:
    """Continue MLM pretraining of a converted Longformer on WikiText (Longformer's recipe).

    Args:
        model: converted model folder (from `longctx convert`) with its MLM head and tokenizer.
        out: output folder: checkpoints/, tensorboard/, model/ (final), metrics.json, run.json, config.json.
        train_file: WikiText raw training file(s) (wiki.train.raw); articles start at ' = Title = ' lines.
        eval_file: WikiText raw evaluation file (wiki.valid.raw); default: the dataset's validation split.
        dataset: hub dataset for the text that has no file: wikitext (= wikitext-103-raw-v1),
            wikitext-2-raw-v1 or repo:config with a 'text' column of lines (train and validation splits);
            none: files only.
        max_pos: tokens per block (cls and sep included); default: all of the model's positions.
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
        source_model: model for the before-training comparison; default: the model the folder was
            converted from; none: skip the comparison.
        source_max_len: block size for the source model in that comparison (at most its positions).
        fast_attention: use longctx.attention's exact SDPA Longformer attention when available.
        seed: seed for initialisation order, data order and training masks.
        resume: continue from the last checkpoint in out/checkpoints.
        force: start over in a non-empty output folder (removes an earlier run's outputs there).
        max_eval_blocks: evaluate only on the text covered by the first this many max_pos blocks.
    """
    names = inspect.signature(pretrain).parameters
    config = resolved_config(pretrain, {k: v for k, v in locals().items() if k in names})
    if isinstance(train_file, str):
        train_file = [train_file]
        config["train_file"] = train_file
    if dataset is not None and dataset.strip().lower() in ("", "none", "null"):
        dataset = config["dataset"] = None  # a recipe's dataset switched off from the command line
    logging.getLogger("longctx").setLevel(logging.INFO)
    _check_values(**config)
    started = time.perf_counter()

    import transformers
    from transformers import DataCollatorForTokenClassification, TrainingArguments

    from longctx.convert import add_length_guard, max_tokens

    out_dir = Path(out)
    checkpoint = None
    if resume:
        checkpoint = _last_checkpoint(out_dir)
    else:
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
    resolved_precision = resolve_precision(precision)
    device, prec = resolved_precision.device, resolved_precision.name
    transformers.set_seed(seed)

    # Model and tokenizer.
    mlm, tokenizer = _load_mlm(model, "model")
    cls_id, sep_id, pad_id, _ = _special_ids(tokenizer)
    limit = max_tokens(mlm.config)
    if max_pos is None:
        max_pos = limit
    elif max_pos > limit:
        raise LongctxError(f"{model}: max_pos {max_pos} is more than the model's {limit} positions")
    config["max_pos"] = max_pos
    if mlm.config.model_type != "longformer":
        log.warning("%s is a %s, not a converted Longformer: training it as is", model, mlm.config.model_type)
    if source_model is None:
        source_model = (getattr(mlm.config, "longctx", None) or {}).get("converted_from")
    if source_model is not None and str(source_model).lower() == "none":
        source_model = None
    config["source_model"] = source_model
    if resume:
        _check_resume_config(out_dir, config)
    add_length_guard(mlm)
    fast = _enable_fast_attention(mlm) if fast_attention else False

    # Data: articles -> tokens -> blocks.
    # Files first; the hub dataset supplies whichever of the two has no file.
    eval_articles, eval_label = wikitext.load_articles([eval_file] if eval_file else None, dataset,
                                                       split="validation")
    train_articles, train_label = wikitext.load_articles(train_file, dataset, split="train")
    t0 = time.perf_counter()
    train_tokens = wikitext.tokenize_articles(train_articles, tokenizer, source=train_label)
    eval_tokens = wikitext.tokenize_articles(eval_articles, tokenizer, source=eval_label)
    train_stream = wikitext.make_stream(train_tokens, sep_id, packing)
    train_spans = wikitext.block_spans(train_stream, max_pos)
    train_waste = wikitext.padding_waste(train_spans, max_pos)
    train_set = MaskedBlocks(train_stream, train_spans, tokenizer, mlm_probability, seed)
    eval_text = masked_eval_text(eval_tokens, tokenizer, block_size=max_pos, packing=packing,
                                 mlm_probability=mlm_probability, max_blocks=max_eval_blocks)
    eval_spans = wikitext.block_spans(eval_text.stream, max_pos)
    log.info("train: %s: %d articles, %d tokens, %d blocks of %d (%s packing, %.2f%% padding), tokenized in %.1f s",
             train_label, len(train_tokens.ids), train_tokens.n_tokens, len(train_spans), max_pos, packing,
             100 * train_waste, time.perf_counter() - t0)
    log.info("eval: %s: %d articles, %d tokens, %d characters (%.3f tokens/character), %d masked, %d blocks",
             eval_label, eval_text.articles, eval_text.text_tokens, eval_text.characters,
             eval_text.text_tokens / eval_text.characters, eval_text.masked_tokens, len(eval_spans))
    tokens_per_step = per_device_train_batch_size * gradient_accumulation_steps * max_pos
    data_info = {
        "train": {"source": train_label, "articles": len(train_tokens.ids), "tokens": train_tokens.n_tokens,
                  "characters": train_tokens.n_chars, "blocks": len(train_spans), "padding_waste": train_waste,
                  "epochs": max_steps * per_device_train_batch_size * gradient_accumulation_steps / len(train_spans)},
        "eval": {"source": eval_label, "articles": eval_text.articles, "tokens": eval_text.text_tokens,
                 "characters": eval_text.characters,
                 "tokens_per_character": eval_text.text_tokens / eval_text.characters,
                 "masked_tokens": eval_text.masked_tokens, "mask_seed": EVAL_MASK_SEED,
                 "blocks": len(eval_spans), "padding_waste": wikitext.padding_waste(eval_spans, max_pos)},
        "packing": packing, "block_size": max_pos, "tokens_per_step": tokens_per_step,
    }
    del train_tokens, eval_tokens, train_articles, eval_articles

    meta = run_metadata(config, seed, precision=resolved_precision)
    write_json(out_dir / "config.json", config)
    write_json(out_dir / "run.json", meta)

    args = TrainingArguments(
        output_dir=str(out_dir / "checkpoints"),
        max_steps=max_steps,
        learning_rate=learning_rate,
        warmup_steps=warmup_steps,
        weight_decay=weight_decay,
        lr_scheduler_type="linear",
        per_device_train_batch_size=per_device_train_batch_size,
        per_device_eval_batch_size=per_device_train_batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        eval_strategy="steps",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=save_total_limit or None,
        logging_strategy="steps",
        logging_steps=logging_steps,
        fp16=prec == "fp16",
        bf16=prec == "bf16",
        use_cpu=device == "cpu",
        activation_checkpointing=gradient_checkpointing,  # transformers 5's name for gradient checkpointing
        activation_checkpointing_kwargs={"use_reentrant": False} if gradient_checkpointing else None,
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,  # training masks are set per epoch on the dataset object (see MaskedBlocks)
        report_to="none",  # TensorBoard is added below with its folder set to out/tensorboard
    )
    dev = args.device
    mlm.to(dev)

    def eval_converted(m) -> dict[str, float]:
        return evaluate_mlm(m, eval_text, max_pos, tokenizer, batch_size=per_device_train_batch_size,
                            device=dev, precision=prec)

    # Before training: the source at its own length and the converted model at max_pos, same masked text.
    metrics_path = out_dir / "metrics.json"
    previous = read_json(metrics_path, "metrics") if resume and metrics_path.is_file() else {}
    before = previous.get("before")
    if before is not None and previous.get("data", {}).get("eval") != data_info["eval"]:
        before = None  # the evaluation text changed since: compare on the new one
    if before is None:
        before = {"converted": {"model": model, **eval_converted(mlm)}}
        if source_model:
            before["source"] = _evaluate_source(source_model, mlm.config, eval_text, tokenizer, source_max_len,
                                                per_device_train_batch_size, dev, prec)
    uniform = math.log2(len(tokenizer))
    _log_before(before, uniform)
    metrics: dict[str, Any] = {"status": "training", "before": before, "uniform_bits_per_token": uniform,
                               "data": data_info, **meta}
    write_json(metrics_path, metrics)

    # Train.
    MLMTrainer, EpochCallback = _trainer_class()
    tensorboard = tensorboard_callback(out_dir / "tensorboard")
    trainer = MLMTrainer(
        model=mlm, args=args, train_dataset=train_set,
        eval_dataset=[{"input_ids": i, "labels": lab} for i, lab in eval_text.blocks(max_pos, cls_id, sep_id)],
        data_collator=DataCollatorForTokenClassification(tokenizer, label_pad_token_id=-100),
        processing_class=tokenizer, callbacks=[tensorboard, EpochCallback(train_set)], compute_loss_func=mlm_loss)
    trainer.eval_fn = eval_converted
    if checkpoint is None:  # the step-0 point of the eval curves
        trainer.log({f"eval_{k}": float(before["converted"][k])
                     for k in ("loss", "perplexity", "bits_per_token", "bits_per_character")})
    else:  # transformers may list lm_head.decoder.* as missing: they are tied, restored from the embeddings
        log.info("resuming from %s", checkpoint)
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    train_seconds = time.perf_counter() - t0
    model_out = trainer.model

    # Global projections, final model, evaluation after training.
    recopied = recopy_global_projections(model_out) if recopy_global else 0
    model_out.config.longctx = {**(getattr(model_out.config, "longctx", None) or {}),
                                "pretrained": {"from": model, "steps": trainer.state.global_step,
                                               "block_size": max_pos, "data": train_label,
                                               "global_projections": "recopied" if recopied else "kept"}}
    _save_model(model_out, tokenizer, out_dir / "model", max_pos)
    after = {"trained": {"model": str(out_dir / "model"), **eval_converted(model_out)}}
    history = trainer.state.log_history
    train_losses = [h for h in history if "loss" in h and "eval_loss" not in h]
    metrics.update({
        "status": "done",
        "after": after,
        "train": {"global_step": trainer.state.global_step, "max_steps": max_steps,
                  "last_logged_loss": train_losses[-1]["loss"] if train_losses else None,
                  "last_logged_step": train_losses[-1]["step"] if train_losses else None,
                  "train_loss_this_run": result.training_loss, "seconds_this_run": train_seconds,
                  "resumed_from": checkpoint, "device": str(dev), "precision": prec,
                  "precision_reason": resolved_precision.reason,
                  "fast_attention": fast, "gradient_checkpointing": gradient_checkpointing,
                  "global_projections": "recopied" if recopied else "kept", "recopied_layers": recopied},
        "log_history": history,
    })
    write_json(metrics_path, metrics)
    b, a = before["converted"], after["trained"]
    log.info("after %d steps: eval loss %.4f -> %.4f, %.4f -> %.4f bits/token, %.4f -> %.4f bits/character "
             "(%.0f s) -> %s", trainer.state.global_step, b["loss"], a["loss"], b["bits_per_token"],
             a["bits_per_token"], b["bits_per_character"], a["bits_per_character"],
             time.perf_counter() - started, out_dir / "model")
    return metrics


def _evaluate_source(source_model: str, long_config, text: MaskedText, tokenizer, source_max_len: int,
                     batch_size: int, device, precision: str) -> dict[str, Any]:
    """The source model's metrics at min(source_max_len, its positions) on the same masked text."""
    from longctx.convert import max_tokens

    try:
        source, _ = _load_mlm(source_model, "source model")
    except LongctxError as e:
        raise LongctxError(f"{e} (pass --source-model PATH, or --source-model none to skip the comparison)") from None
    if source.config.vocab_size != long_config.vocab_size:
        raise LongctxError(f"{source_model}: vocabulary of {source.config.vocab_size} differs from the model's "
                           f"{long_config.vocab_size}: not the source of this model")
    length = min(source_max_len, max_tokens(source.config))
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


def _save_model(model, tokenizer, folder: Path, max_pos: int) -> None:
    """save_pretrained into a temporary sibling, then rename: a crash never leaves a half-written model/."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    with _quiet_transformers():
        model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.model_max_length = max_pos
    tokenizer.save_pretrained(tmp)
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
