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
_AGENTS = ("Ada", "Boris", "Clara", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kofi", "Lena",
           "Mateo", "Nadia", "Omar", "Priya", "Quentin", "Rosa", "Sven", "Tariq", "Ulla", "Viktor", "Wanda", "Yusuf")
_CITIES = ("Paris", "London", "Berlin", "Tokyo", "Cairo", "Lima", "Oslo", "Rome", "Madrid", "Vienna", "Dublin",
           "Prague", "Warsaw", "Athens", "Delhi", "Lisbon", "Quito", "Nairobi", "Hanoi", "Seoul")


def long_qa_examples(n: int, min_words: int = 1500, max_words: int = 3000, facts: int = 3,
                     seed: int = 0) -> list[dict]:
    """Generated long-context QA: each context hides `facts` statements ("Agent Ada lives in Paris.")
    at random places among filler sentences; the question asks for one of them.

    Answers can be anywhere in the context, so a model must read far beyond 512 tokens to find them.
    Word counts are chosen so that contexts are roughly 2,000-4,000 wordpiece tokens."""
    rng = random.Random(seed)
    examples = []
    for i in range(n):
        sentences, words = [], 0
        target = rng.randint(min_words, max_words)
        while words < target:
            sentence = rng.choice(_FILLER) + "."
            sentences.append(sentence)
            words += len(sentence.split())
        agents = rng.sample(_AGENTS, facts)
        cities = rng.sample(_CITIES, facts)
        for agent, city in zip(agents, cities):
            sentences.insert(rng.randrange(len(sentences) + 1), f"Agent {agent} lives in {city}.")
        context = " ".join(sentences)
        k = rng.randrange(facts)
        fact = f"Agent {agents[k]} lives in {cities[k]}."
        start = context.index(fact) + len(f"Agent {agents[k]} lives in ")
        assert context[start:start + len(cities[k])] == cities[k]
        examples.append({"id": f"long-{seed}-{i:05d}", "title": "generated", "context": context,
                         "question": f"Where does agent {agents[k]} live?",
                         "answers": {"text": [cities[k]], "answer_start": [start]}, "is_impossible": False})
    return examples
