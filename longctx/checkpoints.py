"""Checkpoints and model folders that count only when complete.

A kill during a save leaves a folder that looks like a checkpoint (or a model) but is not: weights cut
short, trainer_state.json or the optimizer missing. Two rules keep such folders from being used:

* Resuming (`resume_checkpoint`) takes the newest `checkpoint-N` folder whose files are all whole: the
  safetensors header and size, the torch zip archives (optimizer, scheduler, RNG state) and trainer_state.json
  at step N. Newer torn ones are skipped with a warning naming what is wrong, and left in place: the resumed
  run saves that step again into the same folder. (The Trainer's own `get_last_checkpoint` only looks at
  folder names, and silently starts a fresh optimizer when optimizer.pt is missing.)
* Final model folders (`staged_folder`) are written into a `<name>.incomplete-*` sibling and renamed into
  place, so a kill never leaves a folder that looks complete.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import struct
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from longctx.common import LongctxError, log, read_json_object

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")  # the Trainer's folder names (transformers.trainer_utils)
# Files the Trainer needs to continue exactly: without trainer_state.json it restarts at step 0, and without
# optimizer.pt or scheduler.pt it silently starts a fresh optimizer. They are written after the weights and
# trainer_state.json last, so a save cut short lacks at least one of them.
REQUIRED = ("trainer_state.json", "optimizer.pt", "scheduler.pt")
# Weight files, in the order transformers looks for them.
WEIGHTS = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json", "pytorch_model.bin")


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int  # the optimizer steps it holds (trainer_state.json's global_step)


def safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file is not whole (None when it is): an 8-byte header length, a JSON header, and a
    data section that ends exactly at the end of the file (the format has no trailer to check instead)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{path.name}: cut short ({size} bytes)"
            (n,) = struct.unpack("<Q", head)
            if 8 + n > size:
                return f"{path.name}: cut short (header of {n} bytes, file of {size})"
            header = json.loads(f.read(n))
    except OSError as e:
        return f"{path.name}: unreadable ({e.strerror or e})"
    except ValueError:
        return f"{path.name}: header is not JSON"
    if not isinstance(header, dict):
        return f"{path.name}: header is not a JSON object"
    ends = [t["data_offsets"][1] for k, t in header.items()
            if k != "__metadata__" and isinstance(t, dict) and isinstance(t.get("data_offsets"), list)]
    expected = 8 + n + max(ends, default=0)
    if size != expected:
        return f"{path.name}: {size} bytes where its header describes {expected} (cut short during the save?)"
    return None


def archive_problem(path: Path) -> str | None:
    """Why a torch.save file (a zip archive) is not whole: a cut archive loses its central directory."""
    try:
        with zipfile.ZipFile(path) as archive:
            archive.infolist()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        return f"{path.name}: not a complete archive ({e})"
    return None


def _weights_problem(folder: Path) -> str | None:
    present = [name for name in WEIGHTS if (folder / name).is_file()]
    if not present:
        return "no model weights"
    name = present[0]
    if name.endswith(".index.json"):
        index = read_json_object(folder / name)
        shards = sorted(set((index or {}).get("weight_map", {}).values())) if index else []
        if not shards:
            return f"{name}: unreadable or lists no shards"
        for shard in shards:
            if not (folder / shard).is_file():
                return f"{shard}: missing"
            problem = safetensors_problem(folder / shard) if shard.endswith(".safetensors") \
                else archive_problem(folder / shard)
            if problem:
                return problem
        return None
    return safetensors_problem(folder / name) if name.endswith(".safetensors") else archive_problem(folder / name)


def checkpoint_problem(folder: Path) -> str | None:
    """Why a `checkpoint-N` folder cannot be resumed from (None: it is complete)."""
    for name in REQUIRED:
        if not (folder / name).is_file():
            return f"{name} missing"
    state = read_json_object(folder / "trainer_state.json")
    if state is None or not isinstance(state.get("global_step"), int):
        return "trainer_state.json unreadable or without global_step"
    match = CHECKPOINT.match(folder.name)
    if match and state["global_step"] != int(match.group(1)):
        return f"trainer_state.json is at step {state['global_step']}, not {match.group(1)}"
    problem = _weights_problem(folder)
    if problem:
        return problem
    for archive in sorted(folder.glob("*.pt")) + sorted(folder.glob("*.pth")):
        problem = archive_problem(archive)
        if problem:
            return problem
    return None


def find_checkpoints(folder: str | os.PathLike) -> tuple[Checkpoint | None, list[tuple[Path, str]]]:
    """(the newest complete checkpoint under `folder`, the newer torn ones with what is wrong with each).

    Pure: logs nothing, so dry runs and status views can ask too."""
    folder = Path(folder)
    found = []
    if folder.is_dir():
        for child in folder.iterdir():
            match = CHECKPOINT.match(child.name)
            if match and child.is_dir():
                found.append((int(match.group(1)), child))
    torn: list[tuple[Path, str]] = []
    for step, path in sorted(found, reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return Checkpoint(path, step), torn
        torn.append((path, problem))
    return None, torn


def resume_checkpoint(folder: str | os.PathLike, run: str | os.PathLike) -> Checkpoint:
    """The checkpoint to resume run `run` from (its `folder` of Trainer checkpoints), saying which one and
    which newer ones were skipped as torn; a one-line error when there is none to resume from."""
    folder = Path(folder)
    checkpoint, torn = find_checkpoints(folder)
    for path, problem in torn:
        log.warning("%s: skipped, torn or incomplete (%s)", path, problem)
    if checkpoint is None:
        if torn:
            raise LongctxError(f"{run}: no complete checkpoint to resume from ({len(torn)} torn: "
                               f"{torn[0][0].name}: {torn[0][1]}); start over with --force")
        raise LongctxError(f"{run}: nothing to resume (no checkpoint-* folder in {folder}); run without --resume")
    log.info("resuming from %s (step %d)", checkpoint.path, checkpoint.step)
    return checkpoint


def resume_record(checkpoint: Checkpoint | None, final_step: int) -> dict[str, object]:
    """What metrics.json says about the part of training a run's figures cover: the Trainer's train_loss,
    train_runtime and rates count only the steps run in this process, so a resumed run says from where."""
    first = checkpoint.step + 1 if checkpoint else 1
    return {"resumed_from": str(checkpoint.path) if checkpoint else None,
            "resumed_from_step": checkpoint.step if checkpoint else 0,
            "figures_cover_steps": [first, final_step],
            **({"figures_note": f"train_loss, train_runtime and the rates cover steps {first}..{final_step} only "
                                f"(this run, resumed from step {checkpoint.step})"} if checkpoint else {})}


# Weight files are moved into a used folder last and its old ones removed first: until the move ends, the
# folder has no weights and cannot load as a model (an old config beside new weights never looks complete).
def _is_weights(name: str) -> bool:
    return name.startswith(("model.safetensors", "pytorch_model")) or bool(
        re.match(r"^(model|pytorch_model)-\d+-of-\d+\.(safetensors|bin)$", name))


def _publish(staged: Path, folder: Path) -> None:
    """Move the finished `staged` folder to `folder`: one rename when `folder` is absent or empty, else file
    by file (what is already there and not rewritten stays: --force replaces only what the verb writes)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staged, 0o777 & ~umask)  # mkdtemp makes 0700; a model folder should be as readable as any
    if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
        os.replace(staged, folder)
        return
    if not folder.is_dir():
        raise LongctxError(f"{folder}: exists and is not a folder")
    for old in folder.iterdir():
        if _is_weights(old.name) and old.is_file():
            old.unlink()
    names = sorted((p.name for p in staged.iterdir()), key=lambda n: (_is_weights(n), n.endswith(".index.json")))
    for name in names:
        target = folder / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(staged / name, target)
    staged.rmdir()


@contextlib.contextmanager
def staged_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty `<name>.incomplete-*` sibling of `folder` to write a model into; when the block ends
    without an error it becomes `folder`, otherwise it is removed. A kill leaves only the .incomplete-* folder."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f"{folder.name}.incomplete-", dir=folder.parent))
    try:
        yield staged
        _publish(staged, folder)
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)
