"""The one hub-loading policy for datasets (longctx.data.hub): offline, unreachable and failing loads are one line."""
from __future__ import annotations

import socket

import pytest

from longctx.common import LongctxError
from longctx.data.hub import load_hub_dataset

HINT = "pass a local file instead"


def _online(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


def test_offline_without_cache_refuses_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("offline mode must not probe"))
    with pytest.raises(LongctxError) as e:
        load_hub_dataset("squad_v2", "rajpurkar/squad_v2", None, "validation", hint=HINT)
    message = str(e.value)
    assert "\n" not in message
    assert message == ("squad_v2: cannot load rajpurkar/squad_v2 validation split: offline mode "
                       "(HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) is on and it is not in the datasets cache; " + HINT)


def test_unreachable_hub_refuses_before_datasets_is_asked(monkeypatch):
    _online(monkeypatch)
    import datasets

    def no_route(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_route)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("datasets would retry for ~25 s"))
    with pytest.raises(LongctxError, match=r"^xquad.de: cannot load google/xquad \(xquad.de\) test split: the Hugging "
                                           r"Face hub is not reachable; pass a local file instead$"):
        load_hub_dataset("xquad.de", "google/xquad", "xquad.de", "test", hint=HINT)


def test_reachable_hub_loads_and_names_a_failure(monkeypatch):
    _online(monkeypatch)
    import datasets

    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: type("Conn", (), {"close": lambda self: None})())
    calls = []

    def fake_load(repo, config, split):
        calls.append((repo, config, split))
        if split == "nope":
            raise ValueError("Unknown split \"nope\". Should be one of ['train'].\nmore detail")
        return ["row"]

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    assert load_hub_dataset("me/data", "me/data", "cfg", "train", hint=HINT) == ["row"]
    assert calls == [("me/data", "cfg", "train")]
    with pytest.raises(LongctxError) as e:
        load_hub_dataset("me/data", "me/data", None, "nope", hint=HINT)
    assert str(e.value) == ("me/data: cannot load me/data nope split: Unknown split \"nope\". Should be one of "
                            "['train'].; " + HINT)
