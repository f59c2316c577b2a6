"""`longctx sweep MATRIX.yaml`: every (model, dataset, seed) cell of an experiment matrix, crash-safe.

A matrix (format in docs/EXPERIMENTS.md) names models, datasets, seeds and a shared fine-tuning recipe.
The package in four parts, each one concern:

* `plan`: matrix file -> cells, each with its folder `RUNS_DIR/<model>/<dataset>/seed-<seed>/` (fine-tuning,
  evaluation, model preparation under `_models/<model>/`), checked against the verbs' fields;
* `registry`: the SQLite registry of attempts and the per-cell lock files;
* `state`: what a cell's folder says (complete, resumable, incomplete) and what a dry run shows;
* `runner`: running one cell (child process, resume or move aside, finish atomically).

This module is the verb: plan, then run each cell in order, and summarise. A rerun skips done cells and
never touches their folders; several sweeps on one runs folder (one per GPU) share the work.
"""
from __future__ import annotations

import time
from typing import Any

from longctx.common import LongctxError, git_commit, log, run_metadata, write_json
from longctx.sweep.plan import Plan
from longctx.sweep.plan import plan as make_plan
from longctx.sweep.registry import Registry, now
from longctx.sweep.runner import Options, preflight, run_cell
from longctx.sweep.state import cell_status, folder_state


def _print_plan(p: Plan, statuses: list[str]) -> None:
    width = max([len(c.name) for c in p.cells] + [4])
    print(f"matrix {p.matrix} -> {p.runs_dir} (registry {p.registry})")
    print(f"  {'status':<26} {'cell':<{width}}  step")
    for cell, status in zip(p.cells, statuses):
        extra = " (dependency)" if cell.dependency else ""
        print(f"  {status:<26} {cell.name:<{width}}  {cell.kind}{extra}")
    done = sum(s.startswith("done") for s in statuses)
    print(f"{len(p.cells)} cells: {done} done, {len(p.cells) - done} to run")


def sweep(matrix: str, /, *, runs_dir: str | None = None, dry_run: bool = False, only: list[str] | None = None,
          seeds: list[int] | None = None, isolate: bool = True, resume: bool = True,
          keep_checkpoints: bool = False, fail_fast: bool = False) -> dict[str, Any]:
    """Run every (model, dataset, seed) cell of an experiment matrix; a rerun completes what is missing.

    Args:
        matrix: matrix YAML file (models, datasets, seeds, shared fine-tuning recipe; see docs/EXPERIMENTS.md).
        runs_dir: output root (default: the matrix's runs_dir, else runs/<matrix name>).
        dry_run: list the cells and their status (done, todo, resumable, ...) and run nothing.
        only: run only cells whose name, model or dataset matches one of these patterns (fnmatch,
            e.g. 'roberta-base' or '*/sq3-*/seed-42'); the cells they need run too.
        seeds: seeds to run instead of the matrix's.
        isolate: run each cell in a child process (a crash or leaked memory stays in that cell).
        resume: continue an interrupted cell from its last checkpoint when its settings are unchanged
            (otherwise its folder is moved aside and the cell starts over).
        keep_checkpoints: keep each finished cell's checkpoints/ folder (default: deleted once the cell is done).
        fail_fast: stop at the first failed cell (default: record it and go on with the others).

    Example:
        longctx sweep experiments/thesis.yaml --runs-dir runs/thesis --dry-run
    """
    # every cell checked up front (fields, values, input files): one bad cell stops the sweep before any work
    p = make_plan(matrix, runs_dir=runs_dir, seeds=seeds, only=only, strict=not dry_run, check_files=True)
    if dry_run:
        registry = Registry(p.registry) if p.registry.exists() else None
        statuses = [cell_status(p, c, registry) for c in p.cells]
        if registry:
            registry.close()
        _print_plan(p, statuses)
        return {"runs_dir": str(p.runs_dir),
                "cells": [{"cell": c.name, "kind": c.kind, "status": s, "dependency": c.dependency}
                          for c, s in zip(p.cells, statuses)]}

    preflight(p, [c for c in p.cells if folder_state(c, c.folder(p.runs_dir)) != "complete"])
    registry = Registry(p.registry)
    opts = Options(isolate=isolate, resume=resume, keep_checkpoints=keep_checkpoints, commit=git_commit())
    todo = [c for c in p.cells if folder_state(c, c.folder(p.runs_dir)) != "complete" or not registry.done(c.name)]
    todo_names = {c.name for c in todo}
    write_json(p.runs_dir / "sweep.json", {
        "matrix": str(p.matrix), "description": p.description, "models": p.models, "datasets": p.datasets,
        "groups": p.groups,
        "seeds": p.seeds, "cells": len(p.cells), "updated": now(), **run_metadata()})
    log.info("sweep %s: %d cells, %d done, %d to run -> %s", p.matrix, len(p.cells), len(p.cells) - len(todo),
             len(todo), p.runs_dir)
    outcome: dict[str, tuple[str, str]] = {}
    started = time.perf_counter()
    n = 0
    by_name = {c.name: c for c in p.cells}

    def step(cell) -> bool:
        """Run `cell` unless a cell it needs did not finish; False means stop the sweep (fail_fast)."""
        nonlocal n
        waiting = [need for need in cell.needs if outcome.get(need, ("skipped",))[0] not in
                   ("skipped", "adopted", "ran", "resumed")]
        if waiting:  # failed or blocked (a busy dependency was waited for, or put this cell off)
            outcome[cell.name] = ("blocked", f"needs {waiting[0]} ({outcome[waiting[0]][0]})")
            log.warning("%s: not run: %s", cell.name, outcome[cell.name][1])
            return True
        if cell.name in todo_names:
            n += 1
            log.info("[%d/%d] %s: %s", n, len(todo), cell.name, cell.kind)
        t0 = time.perf_counter()
        outcome[cell.name] = run_cell(p, cell, registry, opts)
        kind, detail = outcome[cell.name]
        if kind == "failed":
            log.error("%s: failed: %s (log: %s)", cell.name, detail, cell.folder(p.runs_dir) / "cell.log")
            return not fail_fast
        if kind != "skipped":
            log.info("%s: %s in %.0f s%s", cell.name, kind, time.perf_counter() - t0, f": {detail}" if detail else "")
        return True

    try:
        # First pass: every cell that can run now. A cell whose dependency is running in another sweep (a shared
        # conversion or MLM continuation) is put off, not dropped: the other cells go first.
        deferred = []
        for cell in p.cells:
            if any(outcome.get(need, ("",))[0] == "busy" for need in cell.needs):
                outcome[cell.name] = ("busy", "waits for a dependency running in another sweep")
                deferred.append(cell)
            elif not step(cell):
                break
        else:
            # Second pass, in plan order (a dependency before its dependents): wait for each dependency the other
            # sweep holds, then take it up -- done there (skipped), or left unfinished (run or resumed here).
            put_off = {c.name for c in deferred}
            for cell in deferred:
                for need in cell.needs:
                    if outcome.get(need, ("",))[0] == "busy" and need not in put_off:
                        log.info("%s: waiting for %s (%s)", cell.name, need, outcome[need][1])
                        outcome[need] = run_cell(p, by_name[need], registry, opts, wait=True)
                if not step(cell):
                    break
    finally:
        registry.close()
    counts: dict[str, int] = {}
    for kind, _ in outcome.values():
        counts[kind] = counts.get(kind, 0) + 1
    log.info("sweep finished in %.0f s: %s", time.perf_counter() - started,
             ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    bad = [name for name, (kind, _) in outcome.items() if kind in ("failed", "blocked")]
    busy = [name for name, (kind, _) in outcome.items() if kind == "busy"]
    if busy:
        log.warning("%d cells are running in another sweep; rerun afterwards to pick up anything left", len(busy))
    if bad:
        raise LongctxError(f"{len(bad)} of {len(p.cells)} cells did not finish ({', '.join(bad[:3])}"
                           f"{', ...' if len(bad) > 3 else ''}); see their cell.log and {p.registry}; "
                           f"rerun the sweep to retry them")
    return {"runs_dir": str(p.runs_dir), "counts": counts,
            "cells": [{"cell": name, "outcome": kind, "detail": detail} for name, (kind, detail) in outcome.items()]}

