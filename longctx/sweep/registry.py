"""The sweep's registry of attempts (SQLite) and its per-cell lock files.

The registry (`RUNS_DIR/registry.sqlite`, WAL mode, synchronous=FULL) holds one row per attempt of a cell;
each statement is one transaction, so a kill -9 leaves the last committed state. A cell runs under an
exclusive flock on `RUNS_DIR/.locks/<cell>.lock`, so several sweeps on one runs folder share the work.
"""
from __future__ import annotations

import json
import os
import socket
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from longctx.common import LongctxError
from longctx.sweep.plan import Cell


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Registry:
    """Attempts of every cell in SQLite (WAL, synchronous=FULL): each statement is one atomic transaction,
    so a kill -9 at any point leaves the last committed state. A cell's latest row is its status; `done`
    rows hold the cell's evaluation metrics."""

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS attempts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        cell TEXT NOT NULL, kind TEXT NOT NULL, model TEXT, dataset TEXT, seed INTEGER,
        status TEXT NOT NULL,          -- running | done | failed | killed | interrupted
        started TEXT NOT NULL, ended TEXT, seconds REAL,
        host TEXT, pid INTEGER, worker_pid INTEGER, git_commit TEXT,
        run_dir TEXT, metrics TEXT, error TEXT, note TEXT);
    CREATE INDEX IF NOT EXISTS attempts_cell ON attempts (cell);
    CREATE VIEW IF NOT EXISTS cells AS
        SELECT * FROM attempts a WHERE a.id = (SELECT max(b.id) FROM attempts b WHERE b.cell = a.cell);
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
            self.conn.row_factory = sqlite3.Row
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.executescript(self.SCHEMA)
        except sqlite3.DatabaseError as e:
            raise LongctxError(f"{self.path}: cannot open the sweep registry ({e})") from None

    def close(self) -> None:
        self.conn.close()

    def start(self, cell: Cell, run_dir: Path, note: str | None = None, commit: str | None = None) -> int:
        cur = self.conn.execute(
            "INSERT INTO attempts (cell, kind, model, dataset, seed, status, started, host, pid, git_commit, "
            "run_dir, note) VALUES (?, ?, ?, ?, ?, 'running', ?, ?, ?, ?, ?, ?)",
            (cell.name, cell.kind, cell.model, cell.dataset, cell.seed, now(), socket.gethostname(), os.getpid(),
             commit, str(run_dir), note))
        return int(cur.lastrowid)

    def set_worker(self, attempt: int, pid: int) -> None:
        self.conn.execute("UPDATE attempts SET worker_pid = ? WHERE id = ?", (pid, attempt))

    def finish(self, attempt: int, status: str, *, metrics: Any = None, error: str | None = None,
               note: str | None = None) -> None:
        self.conn.execute(
            "UPDATE attempts SET status = ?, ended = ?, seconds = round((julianday(?) - julianday(started)) * 86400), "
            "metrics = coalesce(?, metrics), error = coalesce(?, error), note = coalesce(?, note) WHERE id = ?",
            (status, now(), now(), None if metrics is None else json.dumps(metrics), error, note, attempt))

    def adopt(self, cell: Cell, run_dir: Path, attempt: int | None, metrics: Any, note: str) -> None:
        """Record a finished folder as done: its own (interrupted) attempt row when it has one, else a new row."""
        row = self.conn.execute("SELECT status FROM attempts WHERE id = ? AND cell = ?",
                                (attempt, cell.name)).fetchone() if attempt else None
        if row is None:
            attempt = self.start(cell, run_dir, note=note)
        self.finish(attempt, "done", metrics=metrics, note=note)

    def mark_stale(self, cell: str) -> int:
        """Rows still 'running' for a cell whose lock we hold belong to a sweep that was killed."""
        cur = self.conn.execute("UPDATE attempts SET status = 'killed', note = coalesce(note, "
                                "'found running by a later sweep: killed') WHERE cell = ? AND status = 'running'",
                                (cell,))
        return cur.rowcount

    def done(self, cell: str) -> bool:
        return self.conn.execute("SELECT 1 FROM attempts WHERE cell = ? AND status = 'done' LIMIT 1",
                                 (cell,)).fetchone() is not None

    def attempts(self, cell: str | None = None) -> list[dict[str, Any]]:
        rows = (self.conn.execute("SELECT * FROM attempts WHERE cell = ? ORDER BY id", (cell,)) if cell
                else self.conn.execute("SELECT * FROM attempts ORDER BY id"))
        return [dict(r) for r in rows]


class Lock:
    """An exclusive, non-blocking flock on a file; the kernel drops it when its process dies."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def acquire(self, blocking: bool = False) -> bool:
        try:
            import fcntl
        except ImportError:  # not POSIX: no cross-process locking
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "another process"
        except OSError:
            return "another process"


def cell_lock(runs_dir: Path, name: str) -> Lock:
    """The lock of a cell (or of a built dataset, `_data/<name>`) in `runs_dir/.locks/`."""
    return Lock(runs_dir / ".locks" / (name.replace("/", "__") + ".lock"))
