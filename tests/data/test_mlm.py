"""Masked-LM data: evaluation masks fixed across block sizes, training masks a function of (seed, epoch, index)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from longctx.common import REPO_ROOT
from longctx.data import wikitext
from longctx.data.mlm import MaskedBlocks, masked_eval_text

FIXTURES = REPO_ROOT / "tests" / "fixtures"
TRAIN, VALID = str(FIXTURES / "wikitext_train.raw"), str(FIXTURES / "wikitext_valid.raw")


@pytest.fixture(scope="module")
def tokenizer(tiny_encoder_dir):
    """A RoBERTa-style tokenizer (cls 0, sep 2), the one a converted tiny model carries."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_encoder_dir("roberta", max_positions=64))


@pytest.mark.parametrize("packing", ["concat", "article"])
def test_eval_masks_are_the_same_for_every_block_size(tokenizer, packing):
    tokens = wikitext.tokenize_articles(wikitext.load_articles([VALID])[0], tokenizer)
    text = masked_eval_text(tokens, tokenizer, block_size=256, packing=packing, mlm_probability=0.15)
    assert 0.1 < text.masked_tokens / text.text_tokens < 0.2
    again = masked_eval_text(tokens, tokenizer, block_size=256, packing=packing, mlm_probability=0.15)
    assert np.array_equal(text.input_ids, again.input_ids) and np.array_equal(text.labels, again.labels)

    def labels(block_size):
        return np.concatenate([lab[1:-1] for _, lab in text.blocks(block_size, tokenizer.cls_token_id,
                                                                   tokenizer.sep_token_id)])

    assert np.array_equal(labels(256), labels(64)) and np.array_equal(labels(64), text.labels)
    # Separators between articles are never masked.
    assert (text.labels[text.stream.separator] == -100).all()
    # A cut evaluation text: what the first block covers, characters cut with it.
    cut = masked_eval_text(tokens, tokenizer, block_size=256, packing=packing, mlm_probability=0.15, max_blocks=1)
    assert cut.text_tokens == min(254, len(tokens.ids[0])) and cut.characters < text.characters
    assert len(cut.blocks(256, tokenizer.cls_token_id, tokenizer.sep_token_id)) == 1


def test_training_masks_are_a_function_of_seed_epoch_and_index(tokenizer):
    tokens = wikitext.tokenize_articles(wikitext.load_articles([TRAIN])[0], tokenizer)
    stream = wikitext.make_stream(tokens, tokenizer.sep_token_id)
    spans = wikitext.block_spans(stream, 256)
    a, b = (MaskedBlocks(stream, spans, tokenizer, 0.15, seed=1) for _ in range(2))
    torch.manual_seed(123)  # the global RNG plays no part
    first = a[3]
    torch.manual_seed(456)
    assert torch.equal(first["input_ids"], b[3]["input_ids"]) and torch.equal(first["labels"], b[3]["labels"])
    b.epoch = 1
    assert not torch.equal(first["labels"], b[3]["labels"])  # dynamic masking: new masks each epoch
    real = first["labels"] != -100
    assert torch.equal(first["labels"][real],
                       torch.from_numpy(wikitext.with_specials(stream.ids[slice(*spans[3])], 0, 2))[real])
    assert first["labels"][0] == -100 and first["labels"][-1] == -100  # cls and sep never masked
