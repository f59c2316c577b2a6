"""The one policy for loading datasets from the Hugging Face hub (SQuAD & co, TriviaQA, WikiText).

- Offline mode (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) lets `datasets` answer from its local cache, or fail at once.
- Online, one quick TCP probe of the hub endpoint comes first: without it `datasets` retries for ~25 s before
  failing on a machine with no route to the hub.
- Every failure is one LongctxError line: the name the user gave, what was being loaded, why, and what to do
  instead (`hint`, e.g. "download the JSON and pass its path").
"""
from __future__ import annotations

from typing import Any

from longctx.common import LongctxError, hub_offline, hub_reachable


def hub_label(repo: str, config: str | None, split: str) -> str:
    """How messages name a hub split: 'rajpurkar/squad validation split', 'google/xquad (xquad.de) test split'."""
    return f"{repo}{f' ({config})' if config else ''} {split} split"


def load_hub_dataset(name: str, repo: str, config: str | None, split: str, *, hint: str) -> Any:
    """`datasets.load_dataset(repo, config, split=split)` under the policy above.

    Args:
        name: what the user asked for (a short name such as squad_v2, or the repository itself); starts every
            error message.
        repo, config, split: the hub repository, its configuration (None: the default) and the split.
        hint: what to do instead when loading fails, appended to the message.
    Returns:
        The `datasets.Dataset` of that split.
    """
    label = hub_label(repo, config, split)
    offline = hub_offline()
    if not offline and not hub_reachable():
        raise LongctxError(f"{name}: cannot load {label}: the Hugging Face hub is not reachable; {hint}")
    import datasets

    try:
        return datasets.load_dataset(repo, config, split=split)
    except Exception as e:  # cache misses, network errors, bad config or split names come in many types
        if offline:
            why = "offline mode (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) is on and it is not in the datasets cache"
        elif isinstance(e, ConnectionError):
            why = "the Hugging Face hub is not reachable"
        else:
            why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise LongctxError(f"{name}: cannot load {label}: {why}; {hint}") from None
