"""`longctx kfp`: run a sweep matrix on a cluster with existing engines (Kubeflow Pipelines, PyTorchJob).

    longctx kfp compile    experiments/<matrix>.yaml -o pipeline.yaml   [--image IMG] [--gpus N]
    longctx kfp pytorchjob experiments/<matrix>.yaml -o pytorchjob.yaml [--workers N] [--image IMG] [--gpus N]

Each sub-verb is a typed function listed in `longctx.config.VERBS` (its flags are its signature, as for
every verb); `concat-data` is the pipeline's own data step. Both renderers read the matrix exactly as
`longctx sweep` does (`longctx.sweep.plan.plan`: the same cells, recipes,
`${VAR}` expansion and field checks), so a matrix that passes `longctx sweep --dry-run` renders here too.
`${VAR}`s are expanded as the container sees them: DATA_DIR=/data, MODEL_DIR=/models, LOG_DIR=/logs,
HF_HOME=/hf-cache (the image's and docker/compose.yaml's values), other variables from the environment.

`compile` writes a Kubeflow Pipelines (v2 SDK) pipeline with one task per sweep cell: conversion and
pretraining once per model, concatenated datasets once, then fine-tuning per model x dataset x seed and
zero-shot evaluation, then one report over every run. Every task is a container component running this
CLI in the longctx image (`longctx <verb> --config <the cell's recipe> --out <output>`), so a step on the
cluster is the command a user runs locally. A cell's recipe is a string input of its task, so it is part
of the cache key: tasks are cached (same image, recipe and inputs = the earlier result is reused) and a
changed recipe reruns what it changes. Cell folders travel between tasks as KFP artifacts; GPU tasks
request `nvidia.com/gpu`.

`pytorchjob` writes Kubeflow Training Operator manifests for fine-tuning cells too large for one node: a
ConfigMap with each cell's recipe and one PyTorchJob per fine-tuning cell, running
`torchrun -m longctx finetune ...` on a Master and N Worker pods. Cell folders live on a shared
(ReadWriteMany) volume mounted at /runs in the sweep's layout, so the model-preparation cells a job needs
(`_models/...`, `_data/...`) come first, e.g. `longctx sweep MATRIX --runs-dir /runs --only '_models/*'`.

kfp is an optional dependency (`pip install 'longctx[kfp]'`); `pytorchjob` does not need it.
"""
# No `from __future__ import annotations`: kfp reads component functions' annotations as objects.
import contextlib
import copy
import hashlib
import inspect
import json
import os
import re
import shlex
from pathlib import Path
from typing import Any, Iterator

import yaml

from longctx.common import LongctxError, log, write_text
from longctx.config import invoke, verb_name

# Where the plan puts cell folders. In the pipeline, each task's folder is its output artifact (paths under
# RUNS in a cell's fields are rewritten to the upstream task's artifact path); a PyTorchJob mounts the
# shared runs volume here.
RUNS = "/runs"
# The container's folders (docker/Dockerfile ENV, docker/compose.yaml): ${VAR}s in a matrix expand to these.
CONTAINER_DIRS = {"DATA_DIR": "/data", "MODEL_DIR": "/models", "LOG_DIR": "/logs", "HF_HOME": "/hf-cache"}
RECIPE_IN_CONTAINER = "${TMPDIR:-/tmp}/longctx-recipe.yaml"
# Fields the step sets itself (as `longctx sweep` does); never taken from a cell's recipe.
STEP_SET = {"out", "force", "resume"}
# The report step runs: longctx report RUNS_DIR --out DIR --title TITLE (RUNS_DIR in the sweep's layout).
REPORT_COMMAND = ["longctx", "report"]


# --------------------------------------------------------------------------------------------- the plan


@contextlib.contextmanager
def _container_env() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in CONTAINER_DIRS}
    os.environ.update(CONTAINER_DIRS)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def cluster_plan(matrix: str | os.PathLike):
    """The sweep plan of `matrix` with cell folders under RUNS and `${VAR}`s as in the container."""
    from longctx.sweep.plan import plan

    with _container_env():
        return plan(matrix, runs_dir=RUNS)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def cell_recipe(cell, sources: list[str]) -> tuple[dict[str, Any], dict[str, tuple[str, str]]]:
    """A cell's fields split into its recipe and its references to other cells' folders.

    `sources` are the cell folders (relative to RUNS) the cell may read. Returns (recipe, refs) where
    refs[field] = (source, suffix): the field's value is RUNS/source + suffix (e.g. model ->
    ("_models/roberta-long/pretrain", "/model"))."""
    recipe: dict[str, Any] = {}
    refs: dict[str, tuple[str, str]] = {}
    prefixes = sorted(sources, key=len, reverse=True)  # the most specific folder first
    for key, value in cell.kwargs.items():
        if key in STEP_SET:
            continue
        value = _jsonable(value)
        if isinstance(value, str) and value.startswith(RUNS + "/"):
            for source in prefixes:
                prefix = f"{RUNS}/{source}"
                if value == prefix or value.startswith(prefix + "/"):
                    refs[key] = (source, value[len(prefix):])
                    break
            else:
                raise LongctxError(f"{cell.name}: field '{key}' = {value} is inside the runs folder but not in "
                                   f"a cell it depends on ({', '.join(sources) or 'none'})")
            continue
        if RUNS + "/" in json.dumps(value):
            raise LongctxError(f"{cell.name}: field '{key}' refers to the runs folder in a form `longctx kfp` "
                               f"cannot pass between steps: {value!r}")
        recipe[key] = value
    return recipe, refs


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


def _import_kfp():
    try:
        from kfp import compiler, dsl
    except ImportError as e:
        raise LongctxError(f"`longctx kfp compile` needs the Kubeflow Pipelines SDK ({e}); "
                           "install it with: pip install 'longctx[kfp]'") from None
    return compiler, dsl


def _dynamic_component(dsl, name: str, params: list[tuple[str, Any]], body):
    """A container component whose inputs depend on the matrix (kfp reads the signature we give it)."""

    def component(*placeholders):
        return body(*placeholders)

    component.__name__ = name
    component.__doc__ = f"longctx {name.replace('_', ' ')}"
    component.__signature__ = inspect.Signature(
        [inspect.Parameter(p, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=a) for p, a in params])
    return dsl.container_component(component)


class _Components:
    """Container components in `image`, one per (verb, fields read from other cells) shape, made on demand."""

    def __init__(self, dsl, image: str):
        self.dsl, self.image, self.cache = dsl, image, {}

    def cell(self, verb: str, refs: dict[str, tuple[str, str]], sources: list[str]):
        """`longctx VERB --config RECIPE [--field UPSTREAM_PATH/suffix ...] --out OUT`, then SUMMARY.

        Runs as `sh -c SCRIPT RECIPE IN_0 ... OUT SUMMARY`: the script writes the recipe ($0) to a file and
        joins upstream paths with their suffixes itself, so the component needs only plain path placeholders
        (each a whole argument, which every KFP backend resolves). Like `longctx sweep`, it drops the run's
        checkpoints/ once the verb succeeded. SUMMARY gets the run folder's files and tensorboard/ (metrics,
        run metadata, curves), so the report step downloads those instead of every model."""
        dsl = self.dsl
        shape = (verb, tuple(sorted((k, sources.index(s), suffix) for k, (s, suffix) in refs.items())), len(sources))
        if shape in self.cache:
            return self.cache[shape]
        params: list[tuple[str, Any]] = [("recipe", str)]
        params += [(f"in_{i}", dsl.Input[dsl.Artifact]) for i in range(len(sources))]
        params += [("out", dsl.Output[dsl.Artifact]), ("summary", dsl.Output[dsl.Artifact])]
        out, summary = f'"${{{len(sources) + 1}}}"', f'"${{{len(sources) + 2}}}"'
        flags = [f'--{key.replace("_", "-")} "${{{sources.index(source) + 1}}}"{shlex.quote(suffix) if suffix else ""}'
                 for key, (source, suffix) in sorted(refs.items())]
        script = "; ".join([
            "set -e",
            f'printf "%s\\n" "$0" > "{RECIPE_IN_CONTAINER}"',
            " ".join([f'longctx {verb} --config "{RECIPE_IN_CONTAINER}"', *flags, f"--out {out}"]),
            f"rm -rf {out}/checkpoints",
            f"mkdir -p {summary}",
            f"find {out} -mindepth 1 -maxdepth 1 -type f -exec cp {{}} {summary}/ \\;",
            f"if [ -d {out}/tensorboard ]; then cp -R {out}/tensorboard {summary}/; fi",
        ])

        def body(recipe, *rest):
            return dsl.ContainerSpec(image=self.image, command=["sh", "-c", script],
                                     args=[recipe, *(placeholder.path for placeholder in rest)])

        self.cache[shape] = _dynamic_component(dsl, verb, params, body)
        return self.cache[shape]

    def concat_data(self):
        """Build a concatenated dataset (the sweep's runs/_data/<name>/) with `longctx kfp concat-data`."""
        dsl = self.dsl
        if "concat" not in self.cache:
            def body(spec, out):
                return dsl.ContainerSpec(image=self.image, command=["longctx", "kfp", "concat-data"],
                                         args=[spec, out.path])

            self.cache["concat"] = _dynamic_component(
                dsl, "concat_data", [("spec", str), ("out", dsl.Output[dsl.Dataset])], body)
        return self.cache["concat"]

    def report(self, names: list[str], order: dict[str, list[str]], title: str):
        """`longctx report RUNS --out DIR --title TITLE` over the runs' summaries, copied into RUNS in the
        sweep's layout (`<model>/<dataset>/seed-<N>`, `_models/...`) with a sweep.json giving the order."""
        dsl = self.dsl
        params: list[tuple[str, Any]] = [(f"run_{i:03d}", dsl.Input[dsl.Artifact]) for i in range(len(names))]
        params.append(("report", dsl.Output[dsl.Artifact]))
        copies = [f'mkdir -p "$root"/{shlex.quote(str(Path(name).parent))}; cp -R "${{{i + 1}}}" "$root"/{shlex.quote(name)}'
                  for i, name in enumerate(names)]
        script = "; ".join(['set -e', 'root="${TMPDIR:-/tmp}/longctx-runs"', 'rm -rf "$root"', 'mkdir -p "$root"',
                            f'printf "%s\\n" {shlex.quote(json.dumps(order))} > "$root"/sweep.json', *copies,
                            f'exec {" ".join(REPORT_COMMAND)} "$root" --out "$0" --title {shlex.quote(title)}'])

        def body(*placeholders):
            *runs, out = placeholders
            return dsl.ContainerSpec(image=self.image, command=["sh", "-c", script],
                                     args=[out.path, *(run.path for run in runs)])

        return _dynamic_component(dsl, "report", params, body)


def build_pipeline(p, image: str, *, gpus: int = 1, cpu: str = "8", memory: str = "64G"):
    """The KFP pipeline function for a sweep plan `p` (compile it with kfp.compiler.Compiler)."""
    _, dsl = _import_kfp()
    components = _Components(dsl, image)
    name = slug(f"longctx-{Path(p.matrix).stem}")

    @dsl.pipeline(name=name, description=p.description or f"longctx sweep matrix {Path(p.matrix).name}")
    def pipeline():
        tasks: dict[str, Any] = {}   # cell folder (relative to RUNS) -> the task whose output it is
        for data_name, spec in p.data.items():
            folder = data_folder(p, data_name)
            if not any(c.data == data_name for c in p.cells) or folder in tasks:
                continue
            task = components.concat_data()(spec=json.dumps({"sources": spec["sources"], "params": spec["params"]},
                                                            sort_keys=True))
            task.set_display_name(folder).set_caching_options(True)
            task.set_cpu_request("2").set_memory_request("8G")
            tasks[folder] = task
        for cell in p.cells:  # dependencies first
            sources = list(cell.needs) + ([data_folder(p, cell.data)] if cell.data else [])
            recipe, refs = cell_recipe(cell, sources)
            used = [s for s in sources if any(src == s for src, _ in refs.values())]
            component = components.cell(verb_name(cell.function), refs, used)
            inputs = {f"in_{i}": tasks[s].outputs["out"] for i, s in enumerate(used)}
            task = component(recipe=recipe_text(recipe), **inputs)
            task.set_display_name(cell.name).set_caching_options(True)
            for s in sources:
                if s not in used:  # needed (e.g. pretrain before evaluate) but not read: order only
                    task.after(tasks[s])
            if cell.kind == "convert":  # copies weights on the CPU
                task.set_cpu_request("4").set_memory_request("32G").set_memory_limit("32G")
            else:
                task.set_cpu_request(cpu).set_memory_request(memory).set_memory_limit(memory)
                if gpus > 0:
                    task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(gpus)
            tasks[cell.name] = task
        # The report reads the runs' metrics and the pretraining curves: the summaries of those cells.
        runs = [c.name for c in p.cells if c.kind in ("finetune", "evaluate", "pretrain")]
        if any(c.kind in ("finetune", "evaluate") for c in p.cells):
            report_c = components.report(runs, {"models": p.models, "datasets": p.datasets},
                                         f"Results: {Path(p.matrix).stem}")
            report = report_c(**{f"run_{i:03d}": tasks[n].outputs["summary"] for i, n in enumerate(runs)})
            report.set_display_name("report").set_caching_options(True)
            report.set_cpu_request("1").set_memory_request("4G")

    return pipeline


def compile_pipeline(matrix: str, /, out: str, *, image: str | None = None, gpus: int = 1, cpu: str = "8",
                     memory: str = "64G") -> Path:
    """Kubeflow Pipelines YAML of a sweep matrix: convert, pretrain, fine-tune x datasets x seeds, evaluate, report.

    Args:
        matrix: the sweep matrix (experiments/<matrix>.yaml, as for `longctx sweep`).
        out: the pipeline YAML file to write.
        image: image the cluster pulls; use a versioned tag (default: $LONGCTX_IMAGE, environment or .env,
            else $PROJECT_NAME:latest).
        gpus: GPUs per GPU task.
        cpu: CPU request of a GPU task (Kubernetes quantity).
        memory: memory request and limit of a GPU task (e.g. 64G).

    Example:
        longctx kfp compile experiments/thesis.yaml -o pipeline.yaml --image registry.example/longctx:0.1
    """
    compiler, _ = _import_kfp()
    if gpus < 0:
        raise LongctxError(f"--gpus must be >= 0, got {gpus}")
    p = cluster_plan(matrix)
    image = image or default_image()
    _check_image(image)
    try:
        pipeline = build_pipeline(p, image, gpus=gpus, cpu=cpu, memory=memory)
    except ValueError as e:  # kfp's checks of resource strings
        raise LongctxError(f"{matrix}: {e}") from None
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # kfp writes the file itself: compile beside `out` under a temporary name, then write `out` atomically.
    tmp = out.with_name(f".{out.name}.kfp.yaml")
    try:
        compiler.Compiler().compile(pipeline_func=pipeline, package_path=str(tmp))
        header = (f"# Kubeflow pipeline compiled by `longctx kfp compile {matrix}` (image {image}).\n"
                  f"# Upload it in the Kubeflow UI, or: kfp.Client().create_run_from_pipeline_package('{out.name}')\n")
        write_text(out, header + tmp.read_text(encoding="utf-8"))
    finally:
        tmp.unlink(missing_ok=True)
    kinds: dict[str, int] = {}
    for c in p.cells:
        kinds[c.kind] = kinds.get(c.kind, 0) + 1
    log.info("%s: pipeline with %s, image %s", out, ", ".join(f"{n} {k}" for k, n in kinds.items()), image)
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
                         cpu: str = "8", memory: str = "64G") -> list[dict]:
    """A ConfigMap with every fine-tuning cell's recipe, then one PyTorchJob per fine-tuning cell
    (1 Master + `workers` Worker pods with `gpus` GPUs each).

    The operator sets PET_NNODES, PET_NODE_RANK, PET_MASTER_ADDR, PET_MASTER_PORT and (from
    spec.nprocPerNode) PET_NPROC_PER_NODE in every pod; torchrun reads its options from those variables,
    so the command names no hosts. One PVC holds data/, runs/ (the sweep layout) and hf-cache/."""
    if workers < 0:
        raise LongctxError(f"--workers must be >= 0, got {workers}")
    if gpus < 0:
        raise LongctxError(f"--gpus must be >= 0, got {gpus}")
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
        # A pod restarted after a failure (restartPolicy OnFailure) resumes from the run's last checkpoint.
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
                    {"name": "workspace", "mountPath": "/data", "subPath": "data"},
                    {"name": "workspace", "mountPath": RUNS, "subPath": "runs"},
                    {"name": "workspace", "mountPath": "/hf-cache", "subPath": "hf-cache"},
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
        replicas = {"Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": pod}}
        if workers:
            replicas["Worker"] = {"replicas": workers, "restartPolicy": "OnFailure", "template": copy.deepcopy(pod)}
        jobs.append({
            "apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
            "metadata": {"name": job_name(f"{matrix}-{cell.name.replace('/', '-')}"),
                         "labels": {"app.kubernetes.io/part-of": "longctx", "longctx/matrix": matrix,
                                    "longctx/model": slug(cell.model), "longctx/dataset": slug(cell.dataset or ""),
                                    "longctx/seed": str(cell.seed)}},
            "spec": {"nprocPerNode": str(max(gpus, 1)), "runPolicy": {"cleanPodPolicy": "None"},
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
                      pvc: str = "longctx-workspace", cpu: str = "8", memory: str = "64G") -> Path:
    """PyTorchJob manifests of a sweep matrix's fine-tuning cells, for multi-node training (`kubectl apply -f`).

    Args:
        matrix: the sweep matrix (experiments/<matrix>.yaml, as for `longctx sweep`).
        out: the multi-document YAML file to write.
        image: image the cluster pulls; use a versioned tag (default: $LONGCTX_IMAGE, environment or .env,
            else $PROJECT_NAME:latest).
        workers: Worker pods besides the Master.
        gpus: GPUs per pod.
        pvc: ReadWriteMany PersistentVolumeClaim with data/, runs/ and hf-cache/.
        cpu: CPU request of a pod (Kubernetes quantity).
        memory: memory request and limit of a pod (e.g. 64G).

    Example:
        longctx kfp pytorchjob experiments/thesis.yaml -o jobs.yaml --workers 3 --gpus 4
    """
    p = cluster_plan(matrix)
    image = image or default_image()
    _check_image(image)
    docs = pytorchjob_manifests(p, image, workers=workers, gpus=gpus, pvc=pvc, cpu=cpu, memory=memory)
    needs = sorted({n for c in p.cells if c.kind == "finetune" for n in c.needs}
                   | {data_folder(p, c.data) for c in p.cells if c.kind == "finetune" and c.data})
    header = (f"# Rendered by `longctx kfp pytorchjob {matrix}`: kubectl apply -f {Path(out).name}\n"
              f"# {len(docs) - 1} PyTorchJob(s): 1 Master + {workers} Worker pod(s), {gpus} GPU(s) each. PVC '{pvc}'"
              f" (ReadWriteMany) holds data/, runs/ and hf-cache/.\n")
    if needs:
        header += f"# First put these cells in runs/ on the PVC: {', '.join(needs)}\n"
    write_text(out, header + yaml.dump_all(docs, Dumper=_PlainDumper, sort_keys=False, default_flow_style=False))
    log.info("%s: %d PyTorchJob(s), image %s", out, len(docs) - 1, image)
    return Path(out)


# ----------------------------------------------------------------------------------- pipeline helpers


def concat_data(spec: str, out: str, /) -> dict[str, Any]:
    """The pipeline's data step: `longctx concat` for each file of a matrix's concatenated dataset, into OUT.

    Args:
        spec: JSON {"sources": {key: SQuAD file}, "params": longctx.data.concat parameters}, as the compiled
            pipeline passes it.
        out: folder to write ({key}.json per source file and manifest.json).

    Example:
        longctx kfp concat-data '{"sources": {"eval": "dev-v1.1.json"}, "params": {"k": 3}}' sq3/
    """
    from longctx.common import write_json
    from longctx.data.concat import concat_dataset

    try:
        spec_ = json.loads(spec)
        sources, params = spec_["sources"], spec_["params"]
    except (ValueError, KeyError, TypeError) as e:
        raise LongctxError(f"concat-data: invalid spec ({e}): {spec[:200]}") from None
    # `longctx concat` per source file, bound as the CLI binds it. force: OUT is this step's own fresh artifact,
    # and a retried step must be able to rebuild it.
    built = {key: invoke(concat_dataset, {**params, "data": src, "out": str(Path(out) / f"{key}.json"), "force": True},
                         source=f"concat-data {key}")
             for key, src in sources.items()}
    write_json(Path(out) / "manifest.json", {"params": params, "sources": sources, "built": built})
    return built
