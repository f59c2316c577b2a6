"""The demo end to end at tiny scale, and the properties of its generated long-context QA task."""
from __future__ import annotations

import re

import pytest

from longctx.common import LongctxError
from longctx.data.synthetic import long_qa_examples
from longctx.demo import SOURCE_POSITIONS, answer_token_positions, demo

FACT = re.compile(r"Agent (\w+) (?:lives in|works as a|owns a|was born in) (\w+)\.")


def test_generated_questions_are_answerable_exactly_once():
    examples = long_qa_examples(50, seed=3)
    assert len({ex["question"].split(" agent ")[0] for ex in examples}) == 4  # every relation is asked
    for ex in long_qa_examples(50, seed=3) + long_qa_examples(50, seed=4, held_out=True):
        answer, start = ex["answers"]["text"][0], ex["answers"]["answer_start"][0]
        context = ex["context"]
        assert context[start:start + len(answer)] == answer and context.count(answer) == 1
        facts = FACT.findall(context)
        assert len(facts) == 4 and len({agent for agent, _ in facts}) == 4 and len({v for _, v in facts}) == 4
        asked = re.search(r"agent (\w+)", ex["question"]).group(1)
        # The question names exactly one of the four agents, and that agent's fact holds the answer.
        assert [value for agent, value in facts if agent == asked] == [answer]


def test_held_out_questions_share_no_agent_or_city_with_training():
    def entities(examples):
        return {name for ex in examples for fact in FACT.findall(ex["context"]) for name in fact}

    train = long_qa_examples(200, seed=0)
    held_out = long_qa_examples(200, seed=1000, held_out=True)
    assert entities(train) and entities(held_out) and not entities(train) & entities(held_out)
    assert not {ex["id"] for ex in train} & {ex["id"] for ex in held_out}
    assert long_qa_examples(3, seed=0) == long_qa_examples(3, seed=0)  # deterministic


def test_generated_contexts_are_longer_than_the_source_model(minilm_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    examples = long_qa_examples(200, seed=0)
    lengths = [len(ids) for ids in tokenizer([ex["context"] for ex in examples], add_special_tokens=False)["input_ids"]]
    assert min(lengths) > SOURCE_POSITIONS and max(lengths) <= 1300
    positions = answer_token_positions(tokenizer, examples)
    for ex in examples[:20]:  # the position found is the answer's first token
        context_ids = tokenizer(ex["context"], add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(ex["answers"]["text"][0], add_special_tokens=False)["input_ids"]
        p = positions[ex["id"]]
        assert context_ids[p:p + len(answer_ids)] == answer_ids
    beyond = sum(p >= SOURCE_POSITIONS for p in positions.values()) / len(positions)
    early = sum(p < 100 for p in positions.values())
    assert 0.2 < beyond < 0.6 and early > 0  # answers anywhere: near the start, mid-way and beyond 512


def test_demo_runs_end_to_end_and_prints_its_table(tiny_encoder_dir, tmp_path, capsys):
    out = tmp_path / "demo"
    metrics = demo(out=str(out), model=str(tiny_encoder_dir("bert", max_positions=128)), max_pos=512,
                   attention_window=32, train_examples=6, eval_examples=6, precision="fp32")
    printed = capsys.readouterr().out
    assert 0 <= metrics["before"]["f1"] <= 100 and 0 <= metrics["eval"]["f1"] <= 100
    assert metrics["train"]["examples"] == 6
    table = {line.split("  ")[0].strip(): line for line in printed.splitlines()}
    assert "before fine-tuning" in table and "after fine-tuning" in table
    assert f"{metrics['eval']['f1']:6.1f}" in table["after fine-tuning"]
    assert "Longformer 512 positions, window 32" in printed and "fp32" in printed
    for path in ("long-model/config.json", "data/train.json", "data/eval.json", "finetune/predictions.json",
                 "finetune/metrics.json", "finetune/model/model.safetensors"):
        assert (out / path).is_file(), path

    with pytest.raises(LongctxError, match="already exists"):
        demo(out=str(out), model=str(tiny_encoder_dir("bert", max_positions=128)))
