"""Offline stand-ins for hub downloads: tokenizers trained on the fly and tiny encoders.

Tests, the demo and users without network use these; they follow the real families' conventions
(RoBERTa: byte-level BPE, <s>/</s>, pad id 1; XLM-R: Unigram, pad id 1; BERT: WordPiece, [CLS]/[SEP], pad id 0).
"""
from __future__ import annotations

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
        import json

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
        import json

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


_FILLER = (
    "The committee met again in the spring to discuss the harbour plans",
    "Several villages along the river were rebuilt after the flood",
    "Local historians still argue about the origin of the old bridge",
    "The railway reached the northern towns early in the century",
    "Farmers in the valley grew wheat, barley and apples for the market",
    "A small museum now holds letters written by the first settlers",
    "The choir performed every winter in the cathedral on the hill",
    "Most of the forest was protected as a national park decades later",
    "Traders brought salt, cloth and copper tools from the coast",
    "The school opened with forty pupils and a single teacher",
    "Engineers widened the canal so that larger boats could pass",
    "Visitors often remark on the painted ceilings of the town hall",
)
# Each fact is one agent's attribute; a context states one fact of each relation, for four different agents.
# Training and held-out questions draw agents and values from disjoint halves of these pools (even / odd
# positions), so a held-out score cannot come from memorising a name or an answer seen in training.
# Every name and value is one MiniLM/BERT wordpiece and none occurs inside the filler or another value.
_AGENTS = ("Ada", "Boris", "Clara", "Dmitri", "Elena", "Hugo", "Jonas", "Lena", "Mateo", "Nadia", "Omar", "Rosa",
           "Sven", "Viktor", "Wanda", "Yusuf", "Anton", "Bianca", "Carlos", "Emil", "Fatima", "Gustav", "Igor",
           "Julia", "Karim", "Marco", "Nina", "Oscar", "Paula", "Rafael", "Sonia", "Tomas", "Vera", "Walter",
           "Alice", "Arthur", "Chloe", "Felix", "Grace", "Henry", "Isaac", "Lucy", "Olga", "Pablo", "Simon", "Zoe")
_RELATIONS = (  # (fact before the value, question)
    ("Agent {agent} lives in {value}.", "In which city does agent {agent} live?",
     ("Paris", "London", "Berlin", "Tokyo", "Cairo", "Lima", "Oslo", "Rome", "Madrid", "Vienna", "Dublin", "Prague",
      "Warsaw", "Athens", "Delhi", "Lisbon", "Nairobi", "Hanoi", "Seoul", "Moscow", "Sydney", "Toronto", "Boston",
      "Munich", "Milan", "Naples", "Geneva", "Zurich", "Helsinki", "Stockholm", "Budapest", "Bangkok")),
    ("Agent {agent} works as a {value}.", "What is the job of agent {agent}?",
     ("pilot", "doctor", "singer", "judge", "baker", "lawyer", "nurse", "painter", "chef", "sailor", "dentist",
      "actor", "journalist", "architect", "poet", "tailor", "banker", "butcher", "carpenter", "librarian",
      "surgeon", "clerk", "soldier", "mechanic")),
    ("Agent {agent} owns a {value}.", "Which animal does agent {agent} own?",
     ("parrot", "dog", "horse", "rabbit", "goat", "turtle", "camel", "snake", "donkey", "pony", "lizard", "goose",
      "whale", "canary", "sheep", "mouse", "duck", "owl", "monkey", "tiger", "wolf", "fox", "bear", "eagle")),
    ("Agent {agent} was born in {value}.", "In which year was agent {agent} born?",
     tuple(str(year) for year in range(1940, 2000))),
)


def long_qa_examples(n: int, min_words: int = 520, max_words: int = 1000, held_out: bool = False,
                     seed: int = 0) -> list[dict]:
    """Generated long-context QA: each context hides four facts, one per relation and agent ("Agent Ada
    lives in Paris.", "Agent Boris works as a pilot.", ...), at random places among filler sentences; the
    question asks one of them by agent and relation, so the model must find that fact among the distractors
    wherever it sits.

    The default 520-1,000 words are about 600-1,200 wordpiece tokens (more than a 512-position encoder
    reads at once): answers fall before and beyond token 512. `held_out=True` draws agents and values
    from the other half of the pools (use it, with another seed, for evaluation questions)."""
    rng = random.Random(seed)
    agents_pool = _AGENTS[held_out::2]
    split = "eval" if held_out else "train"
    examples = []
    for i in range(n):
        sentences, words = [], 0
        target = rng.randint(min_words, max_words)
        while words < target:
            sentence = rng.choice(_FILLER) + "."
            sentences.append(sentence)
            words += len(sentence.split())
        agents = rng.sample(agents_pool, len(_RELATIONS))
        facts = [(fact.format(agent=agent, value=rng.choice(values[held_out::2])), question.format(agent=agent))
                 for agent, (fact, question, values) in zip(agents, _RELATIONS)]
        for fact, _ in facts:
            sentences.insert(rng.randrange(len(sentences) + 1), fact)
        context = " ".join(sentences)
        fact, question = facts[rng.randrange(len(facts))]
        answer = fact.rsplit(" ", 1)[1].rstrip(".")
        start = context.index(fact) + len(fact) - len(answer) - 1
        examples.append({"id": f"long-{split}-{seed}-{i:05d}", "title": "generated", "context": context,
                         "question": question, "answers": {"text": [answer], "answer_start": [start]},
                         "is_impossible": False})
    return examples
