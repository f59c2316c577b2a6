"""What a cell's folder says about it: done, resumable, incomplete; and what a dry run shows.

A cell is done when its folder holds metrics.json and cell.json with status "done" (written last,
atomically) and the registry has a "done" row. A folder whose verb finished (metrics.json) is complete
even if the sweep's bookkeeping was cut; one with the cell's unchanged settings and a Trainer checkpoint is
resumable; anything else left behind is incomplete and gets moved aside, never deleted.
"""
from __future__ import annotations

import contextlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from longctx.checkpoints import find_checkpoints
from longctx.sweep.plan import SWEEP_SET, Cell, Plan
from longctx.sweep.registry import Registry, cell_lock


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in `path` durable (the directory entry itself is flushed)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_record(path: Path) -> dict[str, Any] | None:
    """A JSON object file's content; None when it is missing, unreadable or not an object (a cut write)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
        return value if isinstance(value, dict) else None
    except (OSError, ValueError):
        return None


def comparable(kwargs: dict[str, Any]) -> dict[str, Any]:
    """A cell's fields as JSON sees them, without what the sweep sets: for "same settings?" checks."""
    return json.loads(json.dumps({k: v for k, v in kwargs.items() if k not in SWEEP_SET}, default=str))


def _has_checkpoint(folder: Path) -> bool:
    """A complete Trainer checkpoint to resume from (the rule the verbs apply: longctx.checkpoints)."""
    return find_checkpoints(folder / "checkpoints")[0] is not None


def folder_state(cell: Cell, folder: Path) -> str:
    """absent | complete | resumable | incomplete (see the module docstring)."""
    if not folder.exists():
        return "absent"
    info = read_record(folder / "cell.json")
    metrics = read_record(folder / "metrics.json")
    if info and info.get("status") == "done":
        return "complete"
    if metrics is not None and metrics.get("status", "done") == "done" and cell.kind != "convert":
        return "complete"  # the verb finished; only the sweep's own bookkeeping was cut short
    if info and comparable(info.get("kwargs", {})) == comparable(cell.kwargs) and _has_checkpoint(folder):
        return "resumable"
    return "incomplete"


def move_aside(folder: Path) -> Path | None:
    """Rename an unfinished folder to <name>.incomplete-<UTC time> (an empty one is just removed)."""
    if not any(folder.iterdir()):
        folder.rmdir()
        return None
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = folder.with_name(f"{folder.name}.incomplete-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = folder.with_name(f"{folder.name}.incomplete-{stamp}-{n}")
    os.rename(folder, target)
    fsync_dir(folder.parent)
    return target


def metrics_summary(metrics: dict[str, Any] | None) -> dict[str, Any]:
    """What the registry keeps of a metrics.json: the evaluation figures (or a pretraining run's final ones)."""
    if not metrics:
        return {}
    if isinstance(metrics.get("eval"), dict):
        return metrics["eval"]
    trained = (metrics.get("after") or {}).get("trained")
    return dict(trained) if isinstance(trained, dict) else {}


def describe(summary: dict[str, Any]) -> str:
    em = summary.get("exact_match", summary.get("exact"))
    if em is not None and "f1" in summary:
        return f"EM {em:.2f} F1 {summary['f1']:.2f}"
    if "loss" in summary:
        return f"MLM eval loss {summary['loss']:.4f}"
    return ""


def cell_status(p: Plan, cell: Cell, registry: Registry | None) -> str:
    """What a dry run shows for a cell: done | done (settings changed) | finished (not registered) | running |
    resumable | incomplete | failed N x | todo."""
    folder = cell.folder(p.runs_dir)
    state = folder_state(cell, folder)
    attempts = registry.attempts(cell.name) if registry else []
    if state == "complete":
        info = read_record(folder / "cell.json") or {}
        if not any(a["status"] == "done" for a in attempts) or info.get("status") != "done":
            return "finished (not registered)"
        if comparable(info.get("kwargs", {})) != comparable(cell.kwargs):
            return "done (settings changed)"
        return "done"
    lock = cell_lock(p.runs_dir, cell.name)
    if lock.path.exists():
        if not lock.acquire():
            return "running"
        lock.release()
    failed = sum(a["status"] == "failed" for a in attempts)
    if state in ("resumable", "incomplete"):
        return state
    return f"todo (failed {failed}x before)" if failed else "todo"
