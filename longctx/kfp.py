"""`longctx kfp`: run a sweep matrix on a cluster with existing engines (Kubeflow Pipelines, PyTorchJob).

    longctx kfp compile    experiments/<matrix>.yaml -o pipeline.yaml   [--image IMG] [--pvc NAME] [--gpus N]
    longctx kfp pytorchjob experiments/<matrix>.yaml -o pytorchjob.yaml [--workers N] [--image IMG] [--pvc NAME]

Each sub-verb is a typed function listed in `longctx.config.VERBS` (its flags are its signature, as for
every verb); `concat-data` is the pipeline's own data step. Both renderers read the matrix exactly as
`longctx sweep` does (`longctx.sweep.plan.plan`: the same cells, recipes, `${VAR}` expansion and field
checks), so a matrix that passes `longctx sweep --dry-run` renders here too. `${VAR}`s are expanded as
the pods see them: DATA_DIR=/data, MODEL_DIR=/models, LOG_DIR=/logs, HF_HOME=/hf-cache (the image's and
docker/compose.yaml's values), other variables from the environment.

Both mount one PersistentVolumeClaim (--pvc) whose folders data/, models/, hf-cache/, logs/ and runs/
appear at /data, /models, /hf-cache, /logs and /runs; cell folders live in runs/ in the sweep's layout
(cell.json, metrics.json), so `longctx sweep --runs-dir` and `longctx report` read them like their own.

`compile` writes a Kubeflow Pipelines (v2 SDK) pipeline: the concatenated datasets, each converted
model's convert -> pretrain chain, its fine-tuning cells (per dataset x seed) and, as soon as one is
done, the zero-shot evaluations that reuse its model, then one report over every run. Cells are loop
items of a few parameterised steps (see "Shape of the pipeline" below), each running the cell's verb as
`longctx sweep` does. The pipeline runs as compiled under kfp.local (docs/KUBEFLOW.md).

`pytorchjob` writes Kubeflow Training Operator manifests for fine-tuning cells too large for one node: a
ConfigMap with each cell's recipe and one PyTorchJob per fine-tuning cell, running
`torchrun -m longctx finetune ...` on a Master and N Worker pods. The model-preparation cells a job needs
(`_models/...`, `_data/...`) come first, e.g. `longctx sweep MATRIX --runs-dir /runs --only '_models/*'`.

kfp and kfp-kubernetes are an optional dependency (`pip install 'longctx[kfp]'`); `pytorchjob` needs neither.
"""
# No `from __future__ import annotations`: kfp reads component functions' annotations as objects.
import contextlib
import copy
import functools
import hashlib
import json
import os
import re
import shlex
from pathlib import Path
from typing import Any, Iterator

import yaml

from longctx.common import LongctxError, log, write_json, write_text
from longctx.config import verb_name

# Where the pods see the volume's runs/ folder (the plan's runs_dir on the cluster).
RUNS = "/runs"
# The container's folders (docker/Dockerfile ENV, docker/compose.yaml): ${VAR}s in a matrix expand to these.
CONTAINER_DIRS = {"DATA_DIR": "/data", "MODEL_DIR": "/models", "LOG_DIR": "/logs", "HF_HOME": "/hf-cache"}
# Fields the step sets itself (as `longctx sweep` does); never taken from a cell's recipe.
STEP_SET = {"out", "force", "resume"}


# --------------------------------------------------------------------------------------------- the plan


def workspace(root: str | os.PathLike = "/") -> dict[str, str]:
    """Where a task sees the volume's folders: `${VAR}` -> ROOT/<folder> (CONTAINER_DIRS under "/"), and
    "RUNS" -> ROOT/runs. Each folder is the volume's subPath of the same name."""
    root = Path(root)
    folders = {var: str(root / Path(path).name) for var, path in CONTAINER_DIRS.items()}
    return {**folders, "RUNS": str(root / Path(RUNS).name)}


@contextlib.contextmanager
def _container_env(folders: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in CONTAINER_DIRS}
    os.environ.update({k: folders[k] for k in CONTAINER_DIRS})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def cluster_plan(matrix: str | os.PathLike, root: str | os.PathLike = "/"):
    """The sweep plan of `matrix` with `${VAR}`s and cell folders as a task sees them: under ROOT, the
    volume's mount root ("/" in the image; a local folder standing in for the volume in a local run)."""
    from longctx.sweep.plan import plan

    folders = workspace(root)
    with _container_env(folders):
        return plan(matrix, runs_dir=folders["RUNS"])


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def data_folder(p, name: str) -> str:
    """The folder (relative to RUNS) where the sweep builds concatenated dataset `name`."""
    return Path(p.data[name]["dir"]).relative_to(RUNS).as_posix()


def recipe_text(fields: dict[str, Any]) -> str:
    """A recipe as YAML, the way it travels to the cluster."""
    return yaml.safe_dump(fields, sort_keys=True, default_flow_style=False, allow_unicode=True)


def default_image() -> str:
    """LONGCTX_IMAGE (a registry image the cluster can pull), else the image `make build` tags locally."""
    return os.environ.get("LONGCTX_IMAGE") or f"{os.environ.get('PROJECT_NAME') or 'longctx'}:latest"


def _check_image(image: str) -> None:
    if image.endswith(":latest") or ":" not in image.rsplit("/", 1)[-1]:
        log.warning("image %s has no fixed tag: the cluster may run another build than the one you tested "
                    "(push a versioned tag and pass --image or set LONGCTX_IMAGE)", image)


def slug(text: str, limit: int = 63) -> str:
    """A Kubernetes-safe name: lower-case letters, digits and '-'."""
    s = re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9-]+", "-", str(text).lower())).strip("-")
    return s[:limit].strip("-") or "x"


# ----------------------------------------------------------------------------------------- kfp pipeline
#
# Shape of the pipeline. The KFP compiler writes one component and one executor per task of the DAG, so
# one task per cell (the old layout: 442 components for the thesis) repeats the same command hundreds of
# times. Here cells are loop items: one task per distinct step, run by dsl.ParallelFor over the cells
# that share it. Dependencies stay per cell: a model's preparation (convert, pretrain) is a chain of
# tasks, its fine-tuning cells a loop after that chain, and each fine-tuning task returns the evaluation
# cells that reuse its model, which a nested loop runs as soon as that one task is done. Models without
# preparation share one loop. (Nested loops over a sub-field of a static loop item do not run under
# kfp.local, so the evaluation cells travel through the task's output instead.)
#
# Every task is a lightweight Python component: kfp.local's SubprocessRunner runs only those, so the
# compiled YAML runs unchanged on a laptop (tests/test_kfp.py) and on a cluster. The component bodies
# import longctx in the image and call run_cell / run_data / run_report below, which run the same
# commands as `longctx sweep` (the cell's verb in `python -m longctx.sweep CELL_FOLDER`).


def cell_step(item: str) -> list:
    """Run one sweep cell in its folder on the runs volume; returns the cells that wait for it."""
    from longctx.kfp import run_cell

    return run_cell(item)


def data_step(spec: str, out: str):
    """Build one concatenated dataset on the runs volume (skipped when already built from the same spec)."""
    from longctx.kfp import run_data

    run_data(spec, out)


def report_step(runs: str, order: dict, title: str):
    """Write the report over the runs volume's cells (RUNS/report)."""
    from longctx.kfp import run_report

    run_report(runs, order, title)


def _cell_record(cell, status: str) -> dict[str, Any]:
    """cell.json in the sweep's form (longctx.sweep.runner), so `longctx sweep` and `longctx report` read
    the pipeline's folders like their own."""
    import socket

    from longctx.sweep.registry import now

    return {"cell": cell.name, "kind": cell.kind, "model": cell.model, "dataset": cell.dataset, "seed": cell.seed,
            "lang": cell.lang, "function": cell.function, "kwargs": cell.kwargs, "matrix": None, "attempt": None,
            "status": status, "started": now(), "host": socket.gethostname(), "git_commit": None,
            "runner": "kfp"}


def run_cell(item: str) -> list[str]:
    """Inside a pipeline task: run the cell `item` (JSON, see `_item`) describes as `longctx sweep` runs a cell.

    A finished folder is kept (a retried or re-submitted pipeline skips it); one with a checkpoint and the
    same settings resumes; anything else left behind is moved aside (never deleted). Checkpoints are
    dropped once the cell is done, and cell.json says "done" last."""
    import shutil
    import subprocess
    import sys

    from longctx.config import parameters, resolve
    from longctx.sweep.plan import Cell
    from longctx.sweep.registry import now
    from longctx.sweep.state import folder_state, move_aside

    item = json.loads(item)  # JSON: KFP constants cannot hold the cells' None fields
    cell = Cell(**item["cell"])
    folder = Path(item["out"])
    state = folder_state(cell, folder)
    if state == "complete":
        log.info("%s: done in an earlier run: skipped", cell.name)
        return item["then"]
    resume = state == "resumable" and "resume" in parameters(resolve(cell.function))
    if state in ("resumable", "incomplete") and not resume:
        moved = move_aside(folder)
        if moved:
            log.info("%s: unfinished folder moved aside to %s", cell.name, moved)
    folder.mkdir(parents=True, exist_ok=True)
    info = _cell_record(cell, "running")
    info["call"] = {**cell.kwargs, "out": str(folder), **({"resume": True} if resume else {"force": True})}
    write_json(folder / "cell.json", info)
    code = subprocess.run([sys.executable, "-m", "longctx.sweep", str(folder)], check=False).returncode
    error = f"exit status {code}" if code else None
    if error is None and cell.kind != "convert" and not (folder / "metrics.json").is_file():
        error = "finished without writing metrics.json"
    if error:
        write_json(folder / "cell.json", {**info, "status": "failed", "ended": now(), "error": error})
        raise LongctxError(f"{cell.name}: {error} (folder {folder})")
    if (folder / "checkpoints").is_dir():
        shutil.rmtree(folder / "checkpoints")
    write_json(folder / "cell.json", {**info, "status": "done", "ended": now()})
    return item["then"]


def run_data(spec: str, out: str) -> None:
    """Inside a pipeline task: the data step's command, looked up in the verb table like every step's."""
    import subprocess
    import sys

    words = verb_name(f"{__name__}:concat_data").split()
    code = subprocess.run([sys.executable, "-m", "longctx", *words, spec, out], check=False).returncode
    if code:
        raise LongctxError(f"longctx {' '.join(words)} {out}: exit status {code}")


def run_report(runs: str, order: dict[str, Any], title: str) -> None:
    """Inside a pipeline task: sweep.json (the table order) in the runs folder, then `longctx report RUNS`."""
    import subprocess
    import sys

    from longctx.common import write_json

    write_json(Path(runs) / "sweep.json", order)
    command = [sys.executable, "-m", "longctx", "report", runs, "--title", title]
    code = subprocess.run(command, check=False).returncode
    if code:
        raise LongctxError(f"longctx report {runs}: exit status {code}")


def _item(p, cell, then: list[str] | None = None) -> str:
    """A cell as a loop item (JSON): its fields, its folder and the items that wait for it."""
    if cell.lang:  # the sweep re-scores these itself (longctx.sweep.runner); the step does not
        raise LongctxError(f"{cell.name}: MLQA re-scoring by the sweep (lang_normalisation with a verb that has "
                           f"no `lang` field) is not supported by `longctx kfp`; run this cell with `longctx sweep`")
    fields = {"name": cell.name, "kind": cell.kind, "function": cell.function, "model": cell.model,
              "dataset": cell.dataset, "seed": cell.seed, "kwargs": _jsonable(cell.kwargs)}
    return json.dumps({"cell": fields, "out": str(cell.folder(p.runs_dir)), "then": then or []}, sort_keys=True)


def pipeline_layout(p) -> tuple[list[dict], list[dict]]:
    """The plan as loops: (chains, shared). A chain is a model's preparation cells in order with its
    fine-tuning items; `shared` holds the items of models without preparation. An item's "then" lists
    the evaluation items that reuse its model."""
    by_name = {c.name: c for c in p.cells}
    prep = {c.name for c in p.cells if c.kind in ("convert", "pretrain")}
    later: dict[str, list] = {}  # cell -> evaluation cells reusing its model
    top: dict[str | None, list] = {}  # last preparation cell (None: none) -> cells right after it
    for cell in p.cells:
        if cell.name in prep:
            continue
        trained = [n for n in cell.needs if n not in prep]
        if len(trained) > 1 or (trained and by_name[trained[0]].kind not in ("finetune", "evaluate")):
            raise LongctxError(f"{cell.name}: needs {', '.join(trained)}: `longctx kfp` runs a cell after at most "
                               f"one trained cell")
        if trained:
            later.setdefault(trained[0], []).append(cell)
        else:
            chain = [n for n in cell.needs if n in prep]
            top.setdefault(chain[-1] if chain else None, []).append(cell)

    def item(cell) -> dict:
        nested = [c.name for c in later.get(cell.name, []) if c.name in later]
        if nested:
            raise LongctxError(f"{nested[0]}: evaluated models are not trained again in `longctx kfp`")
        return _item(p, cell, [_item(p, c) for c in later.get(cell.name, [])])

    chains = []
    for model in p.models:
        steps = [c for c in p.cells if c.name in prep and c.model == model]
        if steps:
            chains.append({"model": model, "prep": [_item(p, c) for c in steps],
                           "cells": [item(c) for c in top.get(steps[-1].name, [])]})
    return chains, [item(c) for c in top.get(None, [])]


def _import_kfp():
    try:
        from kfp import compiler, dsl, kubernetes
    except ImportError as e:
        raise LongctxError(f"`longctx kfp compile` needs the Kubeflow Pipelines SDK and its Kubernetes extension "
                           f"({e}); install them with: pip install 'longctx[kfp]'") from None
    return compiler, dsl, kubernetes


def build_pipeline(p, image: str, *, pvc: str = "longctx-workspace", root: str = "/", gpus: int = 1,
                   cpu: str = "8", memory: str = "64G"):
    """The KFP pipeline function for a sweep plan `p` made by `cluster_plan(matrix, root)`.

    Every task mounts the PersistentVolumeClaim `pvc` (a pipeline parameter, so a run can name another):
    its folders data/, models/, hf-cache/, logs/ and runs/ at ROOT/data, ... (the image's /data, ...).
    Locally, ROOT is a folder standing in for the volume; kfp.local ignores Kubernetes mounts."""
    _, dsl, kubernetes = _import_kfp()
    folders = workspace(root)
    chains, shared = pipeline_layout(p)
    component = functools.partial(dsl.component, base_image=image, install_kfp_package=False)
    cell_c, data_c, report_c = component(cell_step), component(data_step), component(report_step)
    name = slug(f"longctx-{Path(p.matrix).stem}")

    def setup(task, name: str, pvc_name, kind: str):
        task.set_display_name(name).set_caching_options(False)  # the volume, not KFP's cache, says what is done
        for path in folders.values():
            kubernetes.mount_pvc(task, pvc_name=pvc_name, mount_path=path, sub_path=Path(path).name)
        for var, path in folders.items():
            if var != "RUNS":
                task.set_env_variable(var, path)
        if kind == "convert":  # copies weights on the CPU
            task.set_cpu_request("4").set_memory_request("32G").set_memory_limit("32G")
        elif kind in ("data", "report"):
            task.set_cpu_request("2").set_memory_request("8G")
        else:
            task.set_cpu_request(cpu).set_memory_request(memory).set_memory_limit(memory)
            if gpus > 0:
                task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(gpus)
        return task

    def cell_loops(items, pvc_name, after: list) -> list:
        """Loop over `items` (a list or an upstream task's output), then over each task's evaluations."""
        with dsl.ParallelFor(items) as item:
            task = setup(cell_c(item=item), "cell", pvc_name, "finetune")
            for upstream in after:
                task.after(upstream)
            with dsl.ParallelFor(task.output) as evaluation:
                last = setup(cell_c(item=evaluation), "evaluation", pvc_name, "evaluate")
        return [task, last]

    @dsl.pipeline(name=name, description=p.description or f"longctx sweep matrix {Path(p.matrix).name}")
    def pipeline(workspace_pvc: str = pvc):
        data = [{"spec": json.dumps({"sources": spec["sources"], "params": spec["params"]}, sort_keys=True),
                 "out": str(spec["dir"])} for name_, spec in p.data.items() if any(c.data == name_ for c in p.cells)]
        data_tasks = []
        if data:
            with dsl.ParallelFor(data) as d:
                data_tasks.append(setup(data_c(spec=d.spec, out=d.out), "data", workspace_pvc, "data"))
        ends = []
        if shared:
            ends += cell_loops(shared, workspace_pvc, data_tasks)
        for chain in chains:
            previous = None
            for step in chain["prep"]:
                cell = json.loads(step)["cell"]
                task = setup(cell_c(item=step), cell["name"], workspace_pvc, cell["kind"])
                if previous is not None:
                    task.after(previous)
                previous = task
            ends.append(previous)
            if chain["cells"]:
                ends += cell_loops(chain["cells"], workspace_pvc, [previous, *data_tasks])
        if any(c.kind in ("finetune", "evaluate") for c in p.cells):
            order = {"description": p.description, "models": p.models, "datasets": p.datasets, "groups": p.groups,
                     "seeds": p.seeds, "cells": len(p.cells)}
            report = setup(report_c(runs=str(p.runs_dir), order=order, title=f"Results: {Path(p.matrix).stem}"),
                           "report", workspace_pvc, "report")
            for end in ends:
                report.after(end)

    return pipeline


def write_pipeline(p, out: str | os.PathLike, image: str, **options) -> Path:
    """Compile `build_pipeline(p, image, **options)` to the YAML file `out` (written atomically)."""
    compiler, _, _ = _import_kfp()
    try:
        pipeline = build_pipeline(p, image, **options)
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        # kfp writes the file itself: compile beside `out` under a temporary name, then write `out` atomically.
        tmp = out.with_name(f".{out.name}.kfp.yaml")
        try:
            compiler.Compiler().compile(pipeline_func=pipeline, package_path=str(tmp))
            header = (f"# Kubeflow pipeline compiled by `longctx kfp compile {p.matrix}` (image {image}).\n"
                      f"# Upload it in the Kubeflow UI, or: kfp.Client().create_run_from_pipeline_package('{out.name}')\n")
            write_text(out, header + tmp.read_text(encoding="utf-8"))
        finally:
            tmp.unlink(missing_ok=True)
    except ValueError as e:  # kfp's checks of resource strings
        raise LongctxError(f"{p.matrix}: {e}") from None
    return out


def compile_pipeline(matrix: str, /, out: str, *, image: str | None = None, pvc: str = "longctx-workspace",
                     gpus: int = 1, cpu: str = "8", memory: str = "64G") -> Path:
    """Kubeflow Pipelines YAML of a sweep matrix: convert, pretrain, fine-tune x datasets x seeds, evaluate, report.

    Args:
        matrix: the sweep matrix (experiments/<matrix>.yaml, as for `longctx sweep`).
        out: the pipeline YAML file to write.
        image: image the cluster pulls; use a versioned tag (default: $LONGCTX_IMAGE, environment or .env,
            else $PROJECT_NAME:latest). It needs the kfp SDK (pip install 'longctx[kfp]').
        pvc: PersistentVolumeClaim with data/, models/, hf-cache/, logs/ and runs/, mounted at /data, /models,
            /hf-cache, /logs and /runs (ReadWriteMany when tasks run on several nodes); the run's
            `workspace_pvc` parameter can name another.
        gpus: GPUs per GPU task.
        cpu: CPU request of a GPU task (Kubernetes quantity).
        memory: memory request and limit of a GPU task (e.g. 64G).

    Example:
        longctx kfp compile experiments/thesis.yaml -o pipeline.yaml --image registry.example/longctx:0.1
    """
    _import_kfp()
    if gpus < 0:
        raise LongctxError(f"--gpus must be >= 0, got {gpus}")
    p = cluster_plan(matrix)
    image = image or default_image()
    _check_image(image)
    out = write_pipeline(p, out, image, pvc=pvc, gpus=gpus, cpu=cpu, memory=memory)
    kinds: dict[str, int] = {}
    for c in p.cells:
        kinds[c.kind] = kinds.get(c.kind, 0) + 1
    log.info("%s: pipeline with %s, image %s, volume %s", out, ", ".join(f"{n} {k}" for k, n in kinds.items()),
             image, pvc)
    return out


# ------------------------------------------------------------------------------------------- PyTorchJob


class _PlainDumper(yaml.SafeDumper):
    """No &anchors/*aliases, and multi-line strings (recipes) as YAML blocks."""

    def ignore_aliases(self, data):
        return True


_PlainDumper.add_representer(
    str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None))


def job_name(text: str) -> str:
    """A PyTorchJob name: the operator names services <job>-worker-<i>, which must be DNS-1035 labels
    (<= 63 characters, starting with a letter), so names stay <= 50 (longer ones end in a hash)."""
    name = slug(text, 200)
    if not name[0].isalpha():
        name = f"j-{name}"
    if len(name) > 50:
        name = f"{name[:41].rstrip('-')}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"
    return name


def pytorchjob_manifests(p, image: str, *, workers: int = 1, gpus: int = 1, pvc: str = "longctx-workspace",
                         cpu: str = "8", memory: str = "64G", backoff_limit: int = 3) -> list[dict]:
    """A ConfigMap with every fine-tuning cell's recipe, then one PyTorchJob per fine-tuning cell
    (1 Master + `workers` Worker pods with `gpus` GPUs each).

    The operator sets PET_NNODES, PET_NODE_RANK, PET_MASTER_ADDR, PET_MASTER_PORT and (from
    spec.nprocPerNode) PET_NPROC_PER_NODE in every pod; torchrun reads its options from those variables,
    so the command names no hosts. One PVC holds data/, models/, hf-cache/, logs/ and runs/ (the sweep layout)."""
    if workers < 0:
        raise LongctxError(f"--workers must be >= 0, got {workers}")
    if gpus < 0:
        raise LongctxError(f"--gpus must be >= 0, got {gpus}")
    if backoff_limit < 0:
        raise LongctxError(f"--backoff-limit must be >= 0, got {backoff_limit}")
    matrix = slug(Path(p.matrix).stem, 40)
    config_map = slug(f"longctx-{matrix}-recipes")
    cells = [c for c in p.cells if c.kind == "finetune"]
    if not cells:
        raise LongctxError(f"{p.matrix}: no fine-tuning cells to run as PyTorchJobs")
    recipes: dict[str, str] = {}
    jobs: list[dict] = []
    for cell in cells:
        key = slug(cell.name.replace("/", "-"), 200) + ".yaml"
        if key in recipes:
            raise LongctxError(f"{p.matrix}: cells {cell.name} and another one map to the same name {key}; rename one")
        recipe = {k: _jsonable(v) for k, v in cell.kwargs.items() if k not in STEP_SET}
        recipes[key] = recipe_text(recipe)
        out = f"{RUNS}/{cell.name}"
        # A pod restarted after it was killed (restartPolicy ExitCode) resumes from the run's last checkpoint.
        script = (f"resume=; if ls {shlex.quote(out)}/checkpoints/checkpoint-* >/dev/null 2>&1; then resume=--resume; fi; "
                  f"exec torchrun -m longctx {verb_name(cell.function)} --config /etc/longctx/{key} "
                  f"--out {shlex.quote(out)} $resume")
        command = ["sh", "-c", script]
        resources: dict[str, Any] = {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory}}
        if gpus:
            resources["limits"]["nvidia.com/gpu"] = gpus
        pod = {"spec": {
            "containers": [{
                "name": "pytorch",  # the container the training operator configures
                "image": image,
                "command": command,
                "workingDir": "/workspace",
                "env": [{"name": k, "value": v} for k, v in CONTAINER_DIRS.items()],
                "resources": resources,
                "volumeMounts": [
                    {"name": "recipes", "mountPath": "/etc/longctx", "readOnly": True},
                    *({"name": "workspace", "mountPath": path, "subPath": Path(path).name}
                      for path in workspace("/").values()),
                    {"name": "dshm", "mountPath": "/dev/shm"},
                ],
            }],
            "volumes": [
                {"name": "recipes", "configMap": {"name": config_map}},
                # ReadWriteMany: every node reads the data and the model, rank 0 writes the run folder.
                {"name": "workspace", "persistentVolumeClaim": {"claimName": pvc}},
                # DataLoader workers and NCCL need more shared memory than a container's default 64 MB.
                {"name": "dshm", "emptyDir": {"medium": "Memory"}},
            ],
        }}
        # ExitCode: the operator treats exit codes 1-127 as permanent (longctx's 2 for a configuration error,
        # torchrun's 1 when a worker failed) and restarts pods killed by a signal (128+: OOM kill 137,
        # eviction or preemption 143), which then resume from the last checkpoint; runPolicy.backoffLimit
        # bounds those restarts.
        replicas = {"Master": {"replicas": 1, "restartPolicy": "ExitCode", "template": pod}}
        if workers:
            replicas["Worker"] = {"replicas": workers, "restartPolicy": "ExitCode", "template": copy.deepcopy(pod)}
        jobs.append({
            "apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
            "metadata": {"name": job_name(f"{matrix}-{cell.name.replace('/', '-')}"),
                         "labels": {"app.kubernetes.io/part-of": "longctx", "longctx/matrix": matrix,
                                    "longctx/model": slug(cell.model), "longctx/dataset": slug(cell.dataset or ""),
                                    "longctx/seed": str(cell.seed)}},
            "spec": {"nprocPerNode": str(max(gpus, 1)),
                     "runPolicy": {"cleanPodPolicy": "None", "backoffLimit": backoff_limit},
                     "pytorchReplicaSpecs": replicas},
        })
    names = [job["metadata"]["name"] for job in jobs]
    if len(set(names)) != len(names):
        raise LongctxError(f"{p.matrix}: two cells map to the same PyTorchJob name; rename a model or dataset")
    config = {"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": config_map, "labels": {"app.kubernetes.io/part-of": "longctx"}},
              "data": recipes}
    return [config, *jobs]


def render_pytorchjob(matrix: str, /, out: str, *, image: str | None = None, workers: int = 1, gpus: int = 1,
                      pvc: str = "longctx-workspace", cpu: str = "8", memory: str = "64G",
                      backoff_limit: int = 3) -> Path:
    """PyTorchJob manifests of a sweep matrix's fine-tuning cells, for multi-node training (`kubectl apply -f`).

    Args:
        matrix: the sweep matrix (experiments/<matrix>.yaml, as for `longctx sweep`).
        out: the multi-document YAML file to write.
        image: image the cluster pulls; use a versioned tag (default: $LONGCTX_IMAGE, environment or .env,
            else $PROJECT_NAME:latest).
        workers: Worker pods besides the Master.
        gpus: GPUs per pod.
        pvc: ReadWriteMany PersistentVolumeClaim with data/, models/, hf-cache/, logs/ and runs/.
        cpu: CPU request of a pod (Kubernetes quantity).
        memory: memory request and limit of a pod (e.g. 64G).
        backoff_limit: restarts of a job's pods killed by a signal (OOM, eviction) before the job fails;
            exit codes 1-127 (e.g. longctx's 2 for a configuration error) fail it at once.

    Example:
        longctx kfp pytorchjob experiments/thesis.yaml -o jobs.yaml --workers 3 --gpus 4
    """
    p = cluster_plan(matrix)
    image = image or default_image()
    _check_image(image)
    docs = pytorchjob_manifests(p, image, workers=workers, gpus=gpus, pvc=pvc, cpu=cpu, memory=memory,
                                backoff_limit=backoff_limit)
    needs = sorted({n for c in p.cells if c.kind == "finetune" for n in c.needs}
                   | {data_folder(p, c.data) for c in p.cells if c.kind == "finetune" and c.data})
    header = (f"# Rendered by `longctx kfp pytorchjob {matrix}`: kubectl apply -f {Path(out).name}\n"
              f"# {len(docs) - 1} PyTorchJob(s): 1 Master + {workers} Worker pod(s), {gpus} GPU(s) each. PVC '{pvc}'"
              f" (ReadWriteMany) holds data/, models/, hf-cache/, logs/ and runs/.\n")
    if needs:
        header += f"# First put these cells in runs/ on the PVC: {', '.join(needs)}\n"
    write_text(out, header + yaml.dump_all(docs, Dumper=_PlainDumper, sort_keys=False, default_flow_style=False))
    log.info("%s: %d PyTorchJob(s), image %s", out, len(docs) - 1, image)
    return Path(out)


# ----------------------------------------------------------------------------------- pipeline helpers


def concat_data(spec: str, out: str, /) -> dict[str, Any]:
    """The pipeline's data step: `longctx concat` for each file of a matrix's concatenated dataset, into OUT.

    OUT's manifest.json is the sweep's (longctx.sweep.runner.ensure_data): sources with their sha256, so
    `longctx sweep` reuses the folder. A folder already built from the same sources and parameters is kept
    (a retried or re-submitted pipeline skips it); one built differently is an error.

    Args:
        spec: JSON {"sources": {key: SQuAD file}, "params": longctx.data.concat parameters}, as the compiled
            pipeline passes it.
        out: folder to write ({key}.json per source file and manifest.json).

    Example:
        longctx kfp concat-data '{"sources": {"eval": "dev-v1.1.json"}, "params": {"k": 3}}' sq3/
    """
    from longctx.common import read_json, run_metadata
    from longctx.data.concat import concat_file, sha256

    try:
        spec_ = json.loads(spec)
        sources, params = spec_["sources"], spec_["params"]
        if not isinstance(sources, dict) or not isinstance(params, dict):
            raise TypeError("sources and params must be objects")
    except (ValueError, KeyError, TypeError) as e:
        raise LongctxError(f"concat-data: invalid spec ({e}): {spec[:200]}") from None
    folder = Path(out)
    files = {key: {"path": src, "sha256": sha256(src) if Path(src).is_file() else None} for key, src in sources.items()}
    if (folder / "manifest.json").exists():
        manifest = read_json(folder / "manifest.json", "data manifest")
        if isinstance(manifest, dict) and manifest.get("params") == params and manifest.get("sources") == files:
            log.info("%s: already built from the same sources and parameters", folder)
            return manifest.get("built", {})
        raise LongctxError(f"{folder}: was built from other source files or parameters than this spec; move the "
                           f"folder away to rebuild it")
    built = {key: concat_file(src, folder / f"{key}.json", **params) for key, src in sources.items()}
    write_json(folder / "manifest.json", {"params": params, "sources": files, "built": built, **run_metadata()})
    return built
