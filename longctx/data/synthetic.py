"""Generated long-context QA for the demo (`longctx demo`): answers hidden far into long contexts.

Test-only builders (tokenizers, tiny models, short QA sets) are in `longctx.testing`.
"""
from __future__ import annotations

import random

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
