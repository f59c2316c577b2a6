"""Offline stand-ins for hub downloads, for tests and benchmarks: tokenizers trained on the fly, tiny
randomly initialised models and small generated QA sets. Nothing in the library itself imports this module.

The tokenizers follow the real families' conventions (RoBERTa: byte-level BPE, <s>/</s>, pad id 1; XLM-R:
Unigram, pad id 1; BERT: WordPiece, [CLS]/[SEP], pad id 0; T5: Unigram, <pad>=0, </s>=1, sentinels).
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Iterable, Literal

Family = Literal["roberta", "xlm-roberta", "bert"]

_WORDS = (
    "the of and to in a is was for on as with by he it that at from his an were are which this be "
    "river city music war king year team film album song game church school village station island "
    "born played released built named became won called located found known began ended moved led "
    "north south east west first second third new old large small early late great national local "
    "Paris London Berlin Tokyo Cairo Lima Oslo Rome Madrid Vienna Dublin Prague Warsaw Athens Delhi "
    "Ada Boris Clara Dmitri Elena Farid Greta Hugo Ines Jonas Kofi Lena Mateo Nadia Omar Priya "
    "zero one two three four five six seven eight nine ten hundred thousand million "
    "café naïve über straße año garçon façade déjà"
).split()


def corpus(n_sentences: int = 2000, seed: int = 0) -> list[str]:
    """Deterministic pseudo-English sentences (with a few accented words and digits)."""
    rng = random.Random(seed)
    sentences = []
    for _ in range(n_sentences):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(6, 18))]
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words)), str(rng.randint(1000, 2030)))
        sentences.append(" ".join(words).capitalize() + rng.choice([".", ".", "!", "?", ";"]))
    return sentences


def train_tokenizer(family: Family, texts: Iterable[str] | None = None, vocab_size: int = 1000):
    """A transformers fast tokenizer of the family's kind, trained on `texts` (default: `corpus()`)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertTokenizer, RobertaTokenizer, XLMRobertaTokenizer

    texts = list(texts) if texts is not None else corpus()
    if family == "roberta":
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        tok = Tokenizer(models.BPE(unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.train_from_iterator(texts, trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
        state = tok.model.__getstate__()
        merges = json.loads(state)["merges"]
        merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in merges]
        return RobertaTokenizer(vocab=tok.get_vocab(), merges=merges)
    if family == "xlm-roberta":
        specials = ["<s>", "<pad>", "</s>", "<unk>"]
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.NFKC()
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.train_from_iterator(texts, trainers.UnigramTrainer(
            vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>", show_progress=False))
        vocab = [tuple(v) for v in json.loads(tok.to_str())["model"]["vocab"]]
        vocab.append(("<mask>", 0.0))
        return XLMRobertaTokenizer(vocab=vocab)
    if family == "bert":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.train_from_iterator(texts, trainers.WordPieceTrainer(
            vocab_size=vocab_size, special_tokens=specials, show_progress=False))
        return BertTokenizer(vocab=tok.get_vocab(), do_lower_case=True)
    raise ValueError(f"unknown family {family!r}")


def tiny_encoder(family: Family, out: str | Path, hidden_size: int = 32, layers: int = 2, heads: int = 2,
                 max_positions: int = 128, vocab_size: int = 1000, mlm_head: bool = True, seed: int = 0) -> Path:
    """Save a tiny randomly initialised encoder of `family` (MLM head or bare) with its tokenizer to `out`."""
    import torch
    from transformers import (BertConfig, BertForMaskedLM, BertModel, RobertaConfig, RobertaForMaskedLM,
                              RobertaModel, XLMRobertaConfig, XLMRobertaForMaskedLM, XLMRobertaModel)

    tokenizer = train_tokenizer(family, vocab_size=vocab_size)
    common = dict(vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=layers,
                  num_attention_heads=heads, intermediate_size=hidden_size * 4)
    if family == "bert":
        config = BertConfig(max_position_embeddings=max_positions, pad_token_id=tokenizer.pad_token_id, **common)
        cls = BertForMaskedLM if mlm_head else BertModel
    else:
        # RoBERTa-style position ids start at padding_idx + 1 = 2, so the table has 2 extra rows.
        config_cls = RobertaConfig if family == "roberta" else XLMRobertaConfig
        config = config_cls(max_position_embeddings=max_positions + 2, pad_token_id=1, bos_token_id=0,
                            eos_token_id=2, type_vocab_size=1, **common)
        if family == "roberta":
            cls = RobertaForMaskedLM if mlm_head else RobertaModel
        else:
            cls = XLMRobertaForMaskedLM if mlm_head else XLMRobertaModel
    torch.manual_seed(seed)
    model = cls(config)
    tokenizer.model_max_length = max_positions
    out = Path(out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# ---------------------------------------------------------------- seq2seq (T5) stand-ins

_PEOPLE = ("Ada", "Boris", "Clara", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kofi", "Lena",
           "Mateo", "Nadia", "Omar", "Priya")
_PLACES = ("Paris", "London", "Berlin", "Tokyo", "Cairo", "Lima", "Oslo", "Rome", "Madrid", "Vienna", "Dublin",
           "Prague", "Warsaw", "Athens", "Delhi")
# relation -> (statement, question)
_RELATIONS = {"born": ("{p} was born in {c}.", "Where was {p} born?"),
              "lives": ("{p} lives in {c}.", "Where does {p} live?"),
              "works": ("{p} works in {c}.", "Where does {p} work?")}


def synthetic_qa(n: int, *, facts: int = 2, unanswerable: float = 0.0, seed: int = 0,
                 id_prefix: str = "syn") -> list[dict]:
    """Short generated QA records in longctx's flat SQuAD layout.

    Each context states `facts` facts about different people, each with a different relation ("Ada was
    born in Paris. Boris lives in Rome."); the question asks for one of them ("Where was Ada born?").
    With probability `unanswerable` it instead asks about a relation the context does not state
    ("Where does Ada work?"): is_impossible, no answers (SQuAD 2.0). The relation word decides the
    answer, which a tiny model learns in a few hundred steps (binding names to cities takes far longer)."""
    if not 1 <= facts <= len(_RELATIONS) - (unanswerable > 0):
        raise ValueError(f"facts must be 1..{len(_RELATIONS) - (unanswerable > 0)} "
                         f"({len(_RELATIONS)} relations{', one left unstated for unanswerable questions' if unanswerable else ''})")
    rng = random.Random(seed)
    examples = []
    for i in range(n):
        people = rng.sample(_PEOPLE, facts)
        places = rng.sample(_PLACES, facts)
        relations = rng.sample(list(_RELATIONS), facts)
        context = " ".join(_RELATIONS[r][0].format(p=p, c=c) for p, r, c in zip(people, relations, places))
        impossible = rng.random() < unanswerable
        if impossible:
            person = rng.choice(people)
            relation = rng.choice([r for r in _RELATIONS if r not in relations])
            answers = {"text": [], "answer_start": []}
        else:
            k = rng.randrange(facts)
            person, relation, place = people[k], relations[k], places[k]
            statement = _RELATIONS[relation][0].format(p=person, c=place)
            start = context.index(statement) + statement.index(place)
            answers = {"text": [place], "answer_start": [start]}
        examples.append({"id": f"{id_prefix}-{seed}-{i:05d}", "title": "synthetic", "context": context,
                         "question": _RELATIONS[relation][1].format(p=person), "answers": answers,
                         "is_impossible": impossible})
    return examples


def t5_tokenizer(texts: Iterable[str] | None = None, vocab_size: int = 1000, extra_ids: int = 100):
    """A transformers T5Tokenizer whose Unigram (SentencePiece-style) model is trained on corpus()
    plus `texts`, the prompt words and `unanswerable`.

    T5's conventions: Metaspace pieces, <pad>=0, </s>=1, <unk>=2, `extra_ids` sentinels after the vocabulary.
    The general corpus is always included: on a few hundred distinct words alone (a generated QA set) the
    Unigram trainer keeps ~100 pieces, mostly single characters, whatever vocab_size asks for."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import T5Tokenizer

    from longctx.seq2seq import UNANSWERABLE

    texts = corpus() + list(texts or []) + [f"question: context: {UNANSWERABLE}"] * 50
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(texts, trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False))
    vocab = [tuple(v) for v in json.loads(tok.to_str())["model"]["vocab"]]
    return T5Tokenizer(vocab=vocab, extra_ids=extra_ids)


def tiny_t5(out: str | Path, texts: Iterable[str] | None = None, d_model: int = 64, layers: int = 2, heads: int = 4,
            d_ff: int = 256, vocab_size: int = 1000, dropout: float = 0.0, max_length: int = 512,
            seed: int = 0) -> Path:
    """Save a tiny randomly initialised T5 (T5ForConditionalGeneration) and its tokenizer to `out`.

    The tokenizer is trained on corpus() plus `texts`; see `t5_tokenizer`."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    tokenizer = t5_tokenizer(texts, vocab_size=vocab_size)
    tokenizer.model_max_length = max_length
    config = T5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=d_model // heads, d_ff=d_ff,
                      num_layers=layers, num_decoder_layers=layers, num_heads=heads, dropout_rate=dropout,
                      feed_forward_proj="relu", pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(config)
    out = Path(out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
