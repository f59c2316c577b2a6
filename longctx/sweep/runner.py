"""Running a sweep's cells: each under its lock, in a child process by default, finished atomically.

A cell's run is recorded in the registry before it starts and after it ends; its folder gets cell.json
(the exact call) first and status "done" last. A leftover folder is resumed from its checkpoint or moved
aside (see longctx.sweep.state). Cells run in a child process (`python -m longctx.sweep CELL_FOLDER`): a
crash, an out-of-memory kill or leaked GPU memory stays in that cell, and the child dies with the sweep
(Linux PR_SET_PDEATHSIG, plus a parent watchdog).
"""
from __future__ import annotations

import contextlib
import gc
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longctx.common import LongctxError, log, read_json, run_metadata, write_json
from longctx.config import invoke, parameters, resolve, select
from longctx.sweep.plan import Cell, Plan
from longctx.sweep.registry import Registry, cell_lock, now
from longctx.sweep.state import describe, folder_state, fsync_dir, metrics_summary, move_aside, read_record


def _die_with_parent() -> None:
    """In a cell's child process: exit when the sweep that started it dies (even by kill -9)."""
    parent = int(os.environ.get("LONGCTX_SWEEP_PARENT", "0") or 0)
    if not parent:
        return
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)

    def watch() -> None:  # portable fallback (macOS): orphans are re-parented
        while True:
            time.sleep(2)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="longctx-sweep-watchdog").start()


def worker(folder: str) -> int:
    """Entry point of a cell's child process: `python -m longctx.sweep CELL_FOLDER` runs cell.json's call."""
    from longctx.common import setup_logging

    _die_with_parent()
    setup_logging()
    info = read_json(Path(folder) / "cell.json", "cell file")
    try:
        invoke(resolve(info["function"]), info["call"], source=f"{folder}/cell.json")
    except LongctxError as e:
        print(f"longctx sweep: {info['cell']}: error: {e}", file=sys.stderr)
        return 2
    return 0


def _tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    text = text.replace("\r", "\n")
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


def _run_child(cell: Cell, folder: Path, registry: Registry, attempt: int) -> str | None:
    """Run the cell in `python -m longctx.sweep FOLDER`; returns an error text or None."""
    env = dict(os.environ)
    env.update(LONGCTX_SWEEP_PARENT=str(os.getpid()), PYTHONUNBUFFERED="1")
    env.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    env.setdefault("TQDM_DISABLE", "1")
    with open(folder / "cell.log", "ab") as logfile:
        child = subprocess.Popen([sys.executable, "-m", "longctx.sweep", str(folder)], stdout=logfile,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        registry.set_worker(attempt, child.pid)
        try:
            code = child.wait()
        except KeyboardInterrupt:  # Ctrl-C reached the child too; give it a moment to stop
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            raise
    if code == 0:
        return None
    reason = f"exit status {code}" if code > 0 else f"killed by signal {-code}"
    return f"{reason}: {_tail(folder / 'cell.log', 8)}"


def _run_here(cell: Cell, folder: Path, call: dict[str, Any]) -> str | None:
    """Run the cell in this process (--no-isolate); the longctx log and stdout go to cell.log."""
    import logging
    import traceback

    handler = logging.FileHandler(folder / "cell.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("[longctx] %(message)s"))
    log.addHandler(handler)
    try:
        with open(folder / "cell.log", "a", encoding="utf-8") as out, contextlib.redirect_stdout(out):
            try:
                invoke(resolve(cell.function), call, source=f"{folder}/cell.json")
            except LongctxError as e:
                out.write(f"error: {e}\n")
                return str(e)
            except Exception as e:  # a cell's crash must not end the sweep
                out.write(traceback.format_exc())
                return f"{type(e).__name__}: {e}"
    finally:
        log.removeHandler(handler)
        handler.close()
        gc.collect()
        with contextlib.suppress(Exception):
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return None


def ensure_data(p: Plan, name: str) -> None:
    """Build a concatenated dataset under runs/_data/<name>/ once; refuse to reuse one built differently."""
    from longctx.data.concat import concat_file, sha256

    spec = p.data[name]
    folder: Path = spec["dir"]
    lock = cell_lock(p.runs_dir, f"_data/{folder.name}")
    lock.acquire(blocking=True)
    try:
        sources = {key: {"path": src, "sha256": sha256(src) if Path(src).is_file() else None}
                   for key, src in spec["sources"].items()}
        manifest = read_record(folder / "manifest.json")
        if manifest is not None:
            same = manifest.get("params") == spec["params"] and all(
                (manifest.get("sources", {}).get(k) or {}).get("sha256") == v["sha256"]
                and (v["sha256"] is not None or manifest["sources"][k]["path"] == v["path"])
                for k, v in sources.items())
            if same:
                return
            raise LongctxError(f"{folder}: was built from other source files or parameters than "
                               f"datasets.{name} now names; move the folder away to rebuild it")
        log.info("building %s (k=%s, %s) in %s", name, spec["params"]["k"], spec["params"]["distractors"], folder)
        built = {}
        for key, src in spec["sources"].items():
            built[key] = concat_file(src, folder / f"{key}.json", **spec["params"])
        write_json(folder / "manifest.json", {"params": spec["params"], "sources": sources, "built": built,
                                              **run_metadata()})
    finally:
        lock.release()


def preflight(p: Plan, cells: list[Cell]) -> None:
    """Missing input files are reported before hours of compute, not after."""
    missing: dict[str, list[str]] = {}  # file -> what needs it
    inside = str(p.runs_dir.resolve())

    def check(value: Any, what: str) -> None:
        if not isinstance(value, str) or str(Path(value).resolve()).startswith(inside):
            return
        if (value.endswith(".json") or value.startswith(("/", "./", "../"))) and not Path(value).exists():
            missing.setdefault(value, []).append(what)

    for cell in cells:
        for key in ("train_file", "eval_file", "data"):
            check(cell.kwargs.get(key), f"{key} of {cell.name}")
    for name, spec in p.data.items():
        if any(c.data == name for c in cells):
            for src in spec["sources"].values():
                check(src, f"source of datasets.{name}")
    if missing:
        parts = [f"{path} not found ({users[0]}{f' and {len(users) - 1} more' if len(users) > 1 else ''})"
                 for path, users in list(missing.items())[:3]]
        more = f"; and {len(missing) - 3} more missing files" if len(missing) > 3 else ""
        raise LongctxError(f"{p.matrix}: {'; '.join(parts)}{more}")


@dataclass
class Options:
    isolate: bool
    resume: bool
    keep_checkpoints: bool
    commit: str | None


def _finalize(p: Plan, cell: Cell, folder: Path, registry: Registry, opts: Options, attempt: int | None,
              note: str | None = None) -> dict[str, Any]:
    """Post-steps (idempotent), then the done marker (cell.json) and the registry's done row."""
    info = read_record(folder / "cell.json")
    ours = info is not None
    metrics = read_record(folder / "metrics.json")
    if cell.lang and metrics is not None:
        _rescore(folder, cell)
        metrics = read_record(folder / "metrics.json")
    if ours and not opts.keep_checkpoints and (folder / "checkpoints").is_dir():
        shutil.rmtree(folder / "checkpoints")
    summary = metrics_summary(metrics)
    if info is None:
        info = _cell_info(p, cell, None, opts)
        info["note"] = "finished outside the sweep; adopted"
    if info.get("status") != "done":
        info.update(status="done", ended=now(), summary=summary)
        write_json(folder / "cell.json", info)
        fsync_dir(folder)
    if attempt is not None:
        registry.finish(attempt, "done", metrics=summary, note=note)
    else:
        registry.adopt(cell, folder, info.get("attempt"), summary,
                       note or "finished folder found without a registry record: adopted")
    return summary


def _cell_info(p: Plan, cell: Cell, attempt: int | None, opts: Options) -> dict[str, Any]:
    return {"cell": cell.name, "kind": cell.kind, "model": cell.model, "dataset": cell.dataset, "seed": cell.seed,
            "lang": cell.lang, "function": cell.function, "kwargs": cell.kwargs, "matrix": str(p.matrix),
            "attempt": attempt, "status": "running", "started": now(), "host": socket.gethostname(),
            "git_commit": opts.commit}


def run_cell(p: Plan, cell: Cell, registry: Registry, opts: Options, wait: bool = False) -> tuple[str, str]:
    """Run or skip one cell under its lock (`wait`: until another sweep releases it); returns (outcome, detail)."""
    folder = cell.folder(p.runs_dir)
    lock = cell_lock(p.runs_dir, cell.name)
    if not lock.acquire(blocking=wait):
        return "busy", f"running in another sweep ({lock.holder()})"
    try:
        state = folder_state(cell, folder)
        if state == "complete":
            if registry.done(cell.name) and (read_record(folder / "cell.json") or {}).get("status") == "done":
                return "skipped", "done"
            try:
                summary = _finalize(p, cell, folder, registry, opts, None)
            except (LongctxError, OSError, ValueError, KeyError) as e:
                return "failed", f"finished folder, but completing it failed: {e}"
            registry.mark_stale(cell.name)
            return "adopted", describe(summary)
        stale = registry.mark_stale(cell.name)
        earlier = registry.attempts(cell.name)
        resume = (state == "resumable" and opts.resume and "resume" in parameters(select(resolve(cell.function), cell.kwargs))
                  # a resume that failed is not tried twice: the checkpoint itself may be the problem
                  and not (earlier and earlier[-1]["status"] == "failed" and
                           (earlier[-1]["note"] or "").startswith("resumed")))
        if state in ("resumable", "incomplete") and not resume:
            moved = move_aside(folder)
            if moved:
                log.info("%s: unfinished folder moved aside to %s", cell.name, moved)
        if cell.data:
            ensure_data(p, cell.data)
        model = str(cell.kwargs.get("model", ""))
        if cell.kind == "evaluate" and model.startswith(str(p.runs_dir)) and not Path(model).exists():
            error = (f"{model} not found: {cell.needs[0] if cell.needs else 'the training cell'} finished without "
                     f"saving its model (save_model: false); move that cell's folder aside so it is retrained")
            registry.finish(registry.start(cell, folder, commit=opts.commit), "failed", error=error)
            return "failed", error
        note = "resumed from the last checkpoint" if resume else ("earlier attempt killed" if stale else None)
        attempt = registry.start(cell, folder, note=note, commit=opts.commit)
        folder.mkdir(parents=True, exist_ok=resume)
        info = _cell_info(p, cell, attempt, opts)
        info["call"] = {**cell.kwargs, "out": str(folder), **({"resume": True} if resume else {"force": True})}
        write_json(folder / "cell.json", info)
        try:
            error = (_run_child(cell, folder, registry, attempt) if opts.isolate
                     else _run_here(cell, folder, info["call"]))
        except KeyboardInterrupt:
            registry.finish(attempt, "interrupted", error="interrupted (Ctrl-C)")
            raise
        if error is None and cell.kind != "convert" and not (folder / "metrics.json").is_file():
            error = "finished without writing metrics.json"
        if error is None:
            try:
                summary = _finalize(p, cell, folder, registry, opts, attempt)
                return ("resumed" if resume else "ran"), describe(summary)
            except (LongctxError, OSError, ValueError, KeyError) as e:
                error = f"after the run: {e}"
        registry.finish(attempt, "failed", error=error[-4000:])
        info.update(status="failed", ended=now(), error=error[-2000:])
        write_json(folder / "cell.json", info)
        return "failed", error.strip().splitlines()[-1][:300] if error.strip() else "failed"
    finally:
        lock.release()


def _rescore(folder: Path, cell: Cell) -> None:
    """MLQA: re-score predictions with the language's answer normalisation (MLQA's official script)."""
    from longctx.data.squad import load_squad
    from longctx.qa.metrics import compute_metrics, read_predictions

    metrics = read_json(folder / "metrics.json", "metrics")
    if "eval_squad_normalisation" in metrics:
        return
    predictions = read_predictions(str(folder / "predictions.json"))
    gold = load_squad(cell.kwargs["data"])
    examples = [e for e in gold.examples if e["id"] in predictions]
    scored = compute_metrics(predictions, examples=examples, version=gold.version, lang=cell.lang)
    ev = metrics.get("eval", {})
    metrics["eval_squad_normalisation"] = {k: ev.get(k) for k in ("exact_match", "f1")}
    metrics["eval"] = {**ev, **scored, "normalisation": f"mlqa:{cell.lang}"}
    write_json(folder / "metrics.json", metrics)
