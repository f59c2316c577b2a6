"""Small pieces every verb shares: user-facing errors, atomic output, run metadata, paths."""
from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger("longctx")

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("LONGCTX_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


class LongctxError(Exception):
    """An expected mistake (bad input, missing file, refused overwrite).

    The CLI prints it as one line and exits non-zero, without a traceback."""


class _CurrentStderr(logging.StreamHandler):
    """A handler that writes to whatever sys.stderr is at the time of each record. A plain StreamHandler keeps the
    stream it was made with; when a caller swaps sys.stderr (pytest's capture, notebooks, a redirect in a
    wrapping tool) it would write into the old, possibly closed, stream and print a "Logging error" traceback."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns it; the property always answers sys.stderr
        pass


def setup_logging(level: int = logging.INFO) -> None:
    if not any(isinstance(h, _CurrentStderr) for h in log.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("[longctx] %(message)s"))
        log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    A crash therefore never leaves a half-written file that looks complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp creates 0600; results should be as readable as any file the user makes
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _json_value(value: Any) -> Any:
    # A Python-API caller passes paths as Path objects (tests and the CLI pass str); a result must not be lost to
    # json's TypeError after hours of training, so paths are written as the strings they stand for.
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, ensure_ascii=False, default=_json_value) + "\n",
                       encoding="utf-8")
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    path = Path(path)
    if path.is_dir():
        raise LongctxError(f"{path}: is a folder, not a {what}")
    if not path.is_file():
        raise LongctxError(f"{path}: {what} not found")
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise LongctxError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise LongctxError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except ValueError as e:  # after JSONDecodeError (a subclass): an integer of over 4,300 digits
        raise LongctxError(f"{path}: cannot read the {what}: {str(e).split(';')[0]}") from None
    except RecursionError:  # json's recursive parser on thousands of nested brackets
        raise LongctxError(f"{path}: nested too deeply to be a {what}") from None
    except OSError as e:  # unreadable (permissions, a special file)
        raise LongctxError(f"{path}: cannot read the {what} ({e.strerror or e})") from None


def read_json_object(path: str | os.PathLike) -> dict[str, Any] | None:
    """A JSON object from `path`, or None when it is missing, unreadable, not JSON or not an object.

    For files that may be absent or half-written by a crashed run (metrics.json, cell.json, run.json) and
    whose absence the caller reports itself; `read_json` is for files a user named."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def prepare_output_dir(out: str | os.PathLike, force: bool = False) -> Path:
    """Create `out`; refuse to reuse a non-empty folder unless `force` (nothing a user made is overwritten unasked)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LongctxError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise LongctxError(f"{out}: output folder is not empty (pass --force to overwrite)")
    out.mkdir(parents=True, exist_ok=True)
    return out


_VERSIONED = ("longctx", "torch", "transformers", "tokenizers", "datasets", "accelerate", "safetensors", "numpy")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def git_commit() -> str | None:
    """The commit of the longctx checkout in use, with '-dirty' when it has uncommitted changes."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), for records and benchmark tables."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> dict[str, Any]:
    """The machine a result came from: CPU model, torch's CPU kernels, cores and threads, GPUs."""
    import torch

    info: dict[str, Any] = {"cpu": cpu_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def run_metadata(config: dict[str, Any] | None = None, seed: int | None = None,
                 precision: Any = None) -> dict[str, Any]:
    """What every result records: its config, seed, package versions, hardware and git commit."""
    meta: dict[str, Any] = {"versions": package_versions(), "git_commit": git_commit(), "argv": sys.argv,
                            "hardware": hardware()}
    if seed is not None:
        meta["seed"] = seed
    if config is not None:
        meta["config"] = config
    if precision is not None:  # a longctx.precision.Precision: what ran and why
        meta["precision"] = precision.record()
    return meta


def tensorboard_callback(log_dir: str | os.PathLike):
    """A Trainer callback logging to `log_dir`. TrainingArguments has no logging_dir in transformers 5;
    setting the callback's own folder (not the TENSORBOARD_LOGGING_DIR variable) leaves the environment
    alone, and the writer is only opened when training starts, on the main process (one set of files
    under torchrun)."""
    from transformers.integrations import TensorBoardCallback

    callback = TensorBoardCallback()
    callback.logging_dir = str(log_dir)
    return callback


def hub_offline() -> bool:
    """HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set: hub names resolve from the local cache only."""
    return any(os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE")
               for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connect to the hub endpoint: without it `datasets` retries for ~25 s before failing."""
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # the proxy resolves the name; let datasets try
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout).close()
        return True
    except OSError:
        return False


def shared_data(relative: str) -> Path:
    """Path to a file under ../shared/data (used by tests and benchmarks; never committed)."""
    return SHARED_DATA / relative
