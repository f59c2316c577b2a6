"""longctx: long-context question answering research toolkit.

Python API (the same fields as the CLI and the YAML recipes):
    longctx.to_long(model, out, max_pos=4096, attention_window=512)
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public names, imported lazily so `import longctx` does not pay for torch/transformers.
_API = {
    "to_long": "longctx.convert",
    "LongctxError": "longctx.common",
}


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'longctx' has no attribute {name!r}")


__all__ = list(_API)
