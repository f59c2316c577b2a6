"""`longctx kfp`: the Kubeflow pipeline and the PyTorchJob manifests rendered from a sweep matrix.

The pipeline tests need the kfp SDK and kfp-kubernetes (`pip install 'longctx[kfp]'`) and skip with the
reason without them. Besides reading the compiled YAML back, one runs it end to end with kfp.local's
SubprocessRunner on a tiny matrix, a temporary folder standing in for the volume.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from longctx.cli import main
from longctx.common import LongctxError

MATRIX = """\
description: tiny matrix for the kfp tests
seeds: [1, 2]
models:
  base: {model: hub/tiny-encoder}
  long: {model: hub/tiny-encoder, convert: {max_pos: 256, attention_window: 32}, pretrain: pretrain.yaml}
datasets:
  squad: {train_file: "${DATA_DIR}/squad/train.json", eval_file: "${DATA_DIR}/squad/dev.json"}
  xquad: {model_from: squad, eval_files: {de: "${DATA_DIR}/xquad/de.json"}}
  sq3: {concat: {source: squad, k: 2}}
finetune: finetune.yaml
"""


def write_matrix(folder: Path) -> Path:
    (folder / "pretrain.yaml").write_text("max_steps: 10\nlearning_rate: 1.0e-4\n")
    (folder / "finetune.yaml").write_text("inherit: common.yaml\nlearning_rate: 3.0e-5\n")
    (folder / "common.yaml").write_text("max_steps: 5\nmax_length: 256\ndoc_stride: 64\n")
    path = folder / "matrix.yaml"
    path.write_text(MATRIX)
    return path


@pytest.fixture
def matrix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LONGCTX_IMAGE", raising=False)  # so a .env the CLI loads is undone afterwards
    monkeypatch.delenv("PROJECT_NAME", raising=False)
    return write_matrix(tmp_path)


@pytest.fixture(scope="module")
def kfp_sdk():
    return pytest.importorskip("kfp", reason="kfp is not installed (pip install 'longctx[kfp]')")


def _docs(path: Path) -> tuple[dict, dict]:
    """(pipeline spec, Kubernetes platform spec) of a compiled pipeline."""
    spec, platform = yaml.safe_load_all(path.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _items(spec: dict) -> list[dict]:
    """Every cell the compiled pipeline runs: loop items, chain steps' items, and the items nested in them."""
    found: list[dict] = []

    def add(text: str) -> None:
        item = json.loads(text)
        found.append(item)
        for nested in item["then"]:
            add(nested)

    for component in [spec["root"], *spec["components"].values()]:
        for task in component.get("dag", {}).get("tasks", {}).values():
            raw = task.get("parameterIterator", {}).get("items", {}).get("raw")
            if raw and "cell" in raw:
                for text in json.loads(raw):
                    add(text)
            constant = task.get("inputs", {}).get("parameters", {}).get("item", {}).get("runtimeValue")
            if constant:
                add(constant["constant"])
    return found


def test_compile_declares_the_volume_and_one_step_per_command(matrix, kfp_sdk):
    pytest.importorskip("kfp.kubernetes", reason="kfp-kubernetes is not installed (pip install 'longctx[kfp]')")
    from longctx.kfp import cluster_plan

    out = matrix.parent / "pipeline.yaml"
    assert main(["kfp", "compile", str(matrix), "-o", str(out), "--image", "registry.example/longctx:0.1",
                 "--pvc", "shared", "--gpus", "2"]) == 0
    spec, platform = _docs(out)
    executors = spec["deploymentSpec"]["executors"]
    # data loop; plain models' cell + evaluation loops; long's convert, pretrain, cell + evaluation loops; report
    assert len(executors) == 8
    assert spec["root"]["inputDefinitions"]["parameters"]["workspace_pvc"]["defaultValue"] == "shared"
    mounts = {"/data": "data", "/models": "models", "/hf-cache": "hf-cache", "/logs": "logs", "/runs": "runs"}
    for label, executor in executors.items():
        container = executor["container"]
        assert container["image"] == "registry.example/longctx:0.1"
        assert "kfp.dsl.executor_main" in container["command"][2] and "pip install" not in container["command"][2]
        assert {e["name"]: e["value"] for e in container["env"]}["DATA_DIR"] == "/data"
        pvc = platform[label]["pvcMount"]
        assert {m["mountPath"]: m["subPath"] for m in pvc} == mounts, label
        # the claim is the run's workspace_pvc parameter (top-level tasks read it directly, loop bodies via a channel)
        assert {m["pvcNameParameter"]["componentInputParameter"] for m in pvc} <= {
            "workspace_pvc", "pipelinechannel--workspace_pvc"}, label
    # every cell of the plan runs exactly once, in its folder on the runs volume
    plan = cluster_plan(matrix)
    items = _items(spec)
    assert sorted(i["cell"]["name"] for i in items) == sorted(c.name for c in plan.cells)
    assert all(i["out"] == f"/runs/{i['cell']['name']}" for i in items)
    by_name = {i["cell"]["name"]: i for i in items}
    # the zero-shot evaluations wait for (only) the fine-tuning whose model they read
    assert [json.loads(t)["cell"]["name"] for t in by_name["base/squad/seed-1"]["then"]] == ["base/xquad-de/seed-1"]
    assert by_name["base/xquad-de/seed-1"]["cell"]["kwargs"]["model"] == "/runs/base/squad/seed-1/model"
    assert by_name["long/sq3/seed-2"]["cell"]["kwargs"]["model"] == "/runs/_models/long/pretrain/model"
    gpu = {label: (e["container"].get("resources") or {}).get("accelerator") for label, e in executors.items()}
    commands = {label: e["container"]["command"][-1] for label, e in executors.items()}
    assert sum(1 for label in gpu if gpu[label] and str(gpu[label]["count"]) == "2") == 5  # all but convert/data/report
    assert sum(1 for label in gpu if not gpu[label]) == 3
    assert sum("def data_step" in c for c in commands.values()) == 1
    assert sum("def report_step" in c for c in commands.values()) == 1


def test_thesis_pipeline_is_small(tmp_path, monkeypatch, kfp_sdk):
    """One step per distinct command with the cells as loop items: the thesis' 440 cells in a small YAML."""
    pytest.importorskip("kfp.kubernetes", reason="kfp-kubernetes is not installed (pip install 'longctx[kfp]')")
    from longctx.common import REPO_ROOT
    from longctx.kfp import cluster_plan

    monkeypatch.chdir(tmp_path)
    matrix = REPO_ROOT / "experiments" / "thesis.yaml"
    out = tmp_path / "pipeline.yaml"
    assert main(["kfp", "compile", str(matrix), "-o", str(out), "--image", "registry.example/longctx:0.1"]) == 0
    assert out.stat().st_size < 600_000  # was 1.35 MB with one component per cell
    spec, _ = _docs(out)
    assert len(spec["deploymentSpec"]["executors"]) <= 12
    cells = sorted(c.name for c in cluster_plan(matrix).cells)
    assert len(cells) > 400 and sorted(i["cell"]["name"] for i in _items(spec)) == cells


@pytest.fixture
def workspace_root(tmp_path, tiny_encoder_dir):
    """A folder standing in for the volume: data/ with a small QA set, models/ with a tiny RoBERTa."""
    import shutil

    from longctx.data.squad import write_squad
    from longctx.data.synthetic import long_qa_examples

    root = tmp_path / "volume"
    train = long_qa_examples(8, min_words=30, max_words=50, seed=1)
    dev = long_qa_examples(4, min_words=30, max_words=50, seed=2)
    for i, e in enumerate(train + dev):
        e["title"] = f"article-{i % 2}"  # two "articles": the concatenation has neighbours to draw from
    write_squad(train, root / "data" / "qa" / "train.json")
    write_squad(dev, root / "data" / "qa" / "dev.json")
    shutil.copytree(tiny_encoder_dir("roberta", max_positions=64), root / "models" / "tiny")
    return root


LOCAL_MATRIX = {
    "description": "tiny matrix run by kfp.local",
    "seeds": [1, 2],
    "finetune": {"max_length": 64, "doc_stride": 16, "max_steps": 2, "per_device_train_batch_size": 4,
                 "per_device_eval_batch_size": 16, "logging_steps": 1, "precision": "fp32",
                 "group_by_length": False, "n_best": 5},
    "models": {"base": {"model": "${MODEL_DIR}/tiny"},
               "long": {"model": "${MODEL_DIR}/tiny", "convert": {"max_pos": 128, "attention_window": 16}}},
    "datasets": {"qa": {"train_file": "${DATA_DIR}/qa/train.json", "eval_file": "${DATA_DIR}/qa/dev.json"},
                 "xq": {"model_from": "qa", "models": ["long"], "eval_files": {"de": "${DATA_DIR}/qa/dev.json"}},
                 "xq3": {"concat": {"source": "xq", "k": 2}, "model_from": "qa", "models": ["long"]}},
}


# slow: 9 tasks, each two Python processes importing torch; 15 min here on 2 shared cores (load ~14).
@pytest.mark.slow
def test_pipeline_runs_end_to_end_under_kfp_local(tmp_path, workspace_root, monkeypatch, kfp_sdk):
    """The compiled YAML itself, run by kfp.local's SubprocessRunner: convert, data, fine-tuning x 2 seeds,
    zero-shot evaluation of the fine-tuned models, report; every path through the (stand-in) volume."""
    pytest.importorskip("kfp.kubernetes", reason="kfp-kubernetes is not installed (pip install 'longctx[kfp]')")
    from kfp import components, local

    from longctx.common import REPO_ROOT
    from longctx.kfp import cluster_plan, write_pipeline

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # With the checkout on sys.path, `import docker` finds its docker/ folder (a namespace package) and kfp.local's
    # probe for the Docker SDK fails on it; None makes the probe see "not installed" (DockerRunner is not used).
    monkeypatch.setitem(sys.modules, "docker", None)
    matrix = tmp_path / "matrix.yaml"
    matrix.write_text(yaml.safe_dump(LOCAL_MATRIX))
    plan = cluster_plan(matrix, root=workspace_root)
    compiled = write_pipeline(plan, tmp_path / "pipeline.yaml", "registry.example/longctx:0.1",
                              root=workspace_root, gpus=0)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp-root"))
    components.load_component_from_file(str(compiled))(workspace_pvc="unused-locally")

    runs = workspace_root / "runs"
    cells = [c.name for c in plan.cells]
    assert sorted(cells) == sorted(["_models/long/convert", "base/qa/seed-1", "base/qa/seed-2", "long/qa/seed-1",
                                    "long/qa/seed-2", "long/xq-de/seed-1", "long/xq-de/seed-2",
                                    "long/xq3-de/seed-1", "long/xq3-de/seed-2"])
    for name in cells:
        record = json.loads((runs / name / "cell.json").read_text())
        assert record["status"] == "done" and record["cell"] == name, name
        assert not (runs / name / "checkpoints").exists(), name
    evaluated = json.loads((runs / "long/xq3-de/seed-1/metrics.json").read_text())
    assert evaluated["model"] == str(runs / "long/qa/seed-1/model")  # the fine-tuned model, read from the volume
    (data,) = (runs / "_data").iterdir()
    assert json.loads((data / "manifest.json").read_text())["params"]["k"] == 2
    report = json.loads((runs / "report" / "report.json").read_text())
    rows = {(r["model"], r["dataset"]): r["n"] for r in report["rows"]}
    assert rows == {("base", "qa"): 2, ("long", "qa"): 2, ("long", "xq-de"): 2, ("long", "xq3-de"): 2}
    assert "xq3-de" in (runs / "report" / "report.md").read_text()


def _item_json(cell: dict, out: Path) -> str:
    return json.dumps({"cell": cell, "out": str(out), "then": ["next"]})


def test_cell_step_skips_done_folders_and_moves_unfinished_ones_aside(tmp_path, monkeypatch):
    from longctx.kfp import run_cell

    monkeypatch.chdir(tmp_path)
    cell = {"name": "m/d/seed-1", "kind": "finetune", "function": "longctx.finetune:finetune", "model": "m",
            "dataset": "d", "seed": 1, "kwargs": {"model": str(tmp_path / "missing-model"),
                                                  "train_file": str(tmp_path / "missing.json")}}
    done = tmp_path / "done"
    done.mkdir()
    (done / "cell.json").write_text(json.dumps({"status": "done"}))
    (done / "metrics.json").write_text("{}")
    assert run_cell(_item_json(cell, done)) == ["next"]  # nothing run: the folder is as it was
    assert sorted(p.name for p in done.iterdir()) == ["cell.json", "metrics.json"]

    left = tmp_path / "left"
    left.mkdir()
    (left / "partial.txt").write_text("from a killed pod")
    with pytest.raises(LongctxError, match=r"m/d/seed-1: exit status 2"):  # the verb's configuration error
        run_cell(_item_json(cell, left))
    (aside,) = tmp_path.glob("left.incomplete-*")
    assert (aside / "partial.txt").read_text() == "from a killed pod"
    assert json.loads((left / "cell.json").read_text())["status"] == "failed"


def test_compile_without_kfp_says_how_to_install(matrix, monkeypatch):
    monkeypatch.setitem(sys.modules, "kfp", None)  # import kfp -> ImportError
    from longctx.kfp import compile_pipeline

    with pytest.raises(LongctxError, match=r"pip install 'longctx\[kfp\]'"):
        compile_pipeline(matrix, out=matrix.parent / "p.yaml")
    assert not (matrix.parent / "p.yaml").exists()


def test_pytorchjob_manifests(matrix):
    out = matrix.parent / "jobs.yaml"
    assert main(["kfp", "pytorchjob", str(matrix), "-o", str(out), "--workers", "3", "--gpus", "4",
                 "--image", "registry.example/longctx:0.1", "--pvc", "shared", "--cpu", "6", "--memory", "40Gi"]) == 0
    config, *jobs = list(yaml.safe_load_all(out.read_text()))
    assert config["kind"] == "ConfigMap"
    assert len(jobs) == 8  # fine-tuning cells: (base, long) x (squad, sq3) x 2 seeds; evaluations are not jobs
    for job in jobs:
        assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "PyTorchJob"
        assert len(job["metadata"]["name"]) <= 50 and job["metadata"]["name"][0].isalpha()
        assert job["spec"]["nprocPerNode"] == "4"
        replicas = job["spec"]["pytorchReplicaSpecs"]
        assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 3
        for role in ("Master", "Worker"):
            pod = replicas[role]["template"]["spec"]
            (container,) = pod["containers"]
            assert container["name"] == "pytorch" and container["image"] == "registry.example/longctx:0.1"
            assert container["resources"] == {"requests": {"cpu": "6", "memory": "40Gi"},
                                              "limits": {"memory": "40Gi", "nvidia.com/gpu": 4}}
            assert "exec torchrun -m longctx finetune --config /etc/longctx/" in container["command"][2]
            assert {"name": "workspace", "persistentVolumeClaim": {"claimName": "shared"}} in pod["volumes"]
            assert {"name": "workspace", "mountPath": "/models", "subPath": "models"} in container["volumeMounts"]
            # exit codes 1-127 (longctx's 2: a configuration error) are permanent; signals (OOM, eviction) restart
            assert replicas[role]["restartPolicy"] == "ExitCode"
        assert job["spec"]["runPolicy"]["backoffLimit"] == 3
    job = next(j for j in jobs if j["metadata"]["labels"]["longctx/model"] == "long"
               and j["metadata"]["labels"]["longctx/dataset"] == "squad" and j["metadata"]["labels"]["longctx/seed"] == "1")
    command = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["command"][2]
    assert "--out /runs/long/squad/seed-1" in command
    key = command.split("--config /etc/longctx/")[1].split()[0]
    assert yaml.safe_load(config["data"][key]) == {
        "learning_rate": 3e-5, "max_steps": 5, "max_length": 256, "doc_stride": 64, "seed": 1, "save_model": True,
        "model": "/runs/_models/long/pretrain/model",
        "train_file": "/data/squad/train.json", "eval_file": "/data/squad/dev.json"}
    assert "_models/long/pretrain" in out.read_text().split("apiVersion")[0]  # the header names what must exist


def test_pytorchjob_restart_resumes_from_a_checkpoint(matrix, tmp_path):
    """The pod command passes --resume only when the run folder already has a checkpoint."""
    from longctx.kfp import cluster_plan, pytorchjob_manifests

    _, job, *_ = pytorchjob_manifests(cluster_plan(matrix), "img:1", workers=0)
    assert "Worker" not in job["spec"]["pytorchReplicaSpecs"]
    script = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["command"][2]
    runs = tmp_path / "runs"
    script = script.replace("/runs/", f"{runs}/").replace("exec torchrun", "echo torchrun")
    fresh = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout
    assert fresh.strip().endswith(f"--out {runs}/base/squad/seed-1")
    (runs / "base/squad/seed-1/checkpoints/checkpoint-10").mkdir(parents=True)
    again = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout
    assert again.strip().endswith("--resume")


def test_pytorchjob_pod_exits_with_the_verbs_status(matrix, tmp_path):
    """The pod's exit status is the command's own (exec), so the operator's ExitCode policy sees a
    configuration error (2) as permanent; --backoff-limit bounds the restarts of killed pods."""
    from longctx.kfp import cluster_plan, pytorchjob_manifests

    _, job, *_ = pytorchjob_manifests(cluster_plan(matrix), "img:1", workers=0, backoff_limit=0)
    assert job["spec"]["runPolicy"]["backoffLimit"] == 0
    script = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["command"][2]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "torchrun").write_text("#!/bin/sh\nexit 2\n")  # what torchrun returns for longctx's exit 2
    (bin_dir / "torchrun").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["sh", "-c", script.replace("/runs/", f"{tmp_path}/runs/")], env=env, check=False)
    assert result.returncode == 2
    with pytest.raises(LongctxError, match="backoff-limit"):
        pytorchjob_manifests(cluster_plan(matrix), "img:1", backoff_limit=-1)


def test_concat_data_step_builds_the_sweep_files(tmp_path, monkeypatch):
    from longctx.kfp import concat_data

    monkeypatch.chdir(tmp_path)  # main() loads ./.env: not the checkout's

    source = tmp_path / "squad.json"
    paragraphs = [{"context": f"Paragraph {i} says the answer is {word}.",
                   "qas": [{"id": f"q{i}", "question": f"What does paragraph {i} say?",
                            "answers": [{"text": word, "answer_start": len(f"Paragraph {i} says the answer is ")}]}]}
                  for i, word in enumerate(["red", "green", "blue"])]
    source.write_text(json.dumps({"version": "1.1", "data": [{"title": "Colours", "paragraphs": paragraphs}]}))
    spec = json.dumps({"sources": {"eval": str(source)}, "params": {"k": 2, "distractors": "neighbours",
                                                                    "separator": "\n\n", "seed": 0, "questions": "all"}})
    assert main(["kfp", "concat-data", spec, str(tmp_path / "sq3")]) == 0
    built = json.loads((tmp_path / "sq3" / "eval.json").read_text())
    assert built["data"] and (tmp_path / "sq3" / "manifest.json").is_file()
    # a retried step keeps what is built; a different spec for the same folder is refused
    before = (tmp_path / "sq3" / "eval.json").stat().st_mtime_ns
    assert main(["kfp", "concat-data", spec, str(tmp_path / "sq3")]) == 0
    assert (tmp_path / "sq3" / "eval.json").stat().st_mtime_ns == before
    other = json.dumps({**json.loads(spec), "params": {**json.loads(spec)["params"], "k": 3}})
    with pytest.raises(LongctxError, match="built from other source files or parameters"):
        concat_data(other, str(tmp_path / "sq3"))
    with pytest.raises(LongctxError, match="invalid spec"):
        concat_data("{not json", str(tmp_path / "x"))


def test_compile_rejects_a_bad_resource_string(matrix, kfp_sdk, capsys):
    assert main(["kfp", "compile", str(matrix), "-o", "p.yaml", "--memory", "lots"]) == 2
    assert "Invalid memory string" in capsys.readouterr().err


def test_kfp_cli_errors_are_one_line(matrix, capsys):
    assert main(["kfp", "pytorchjob", str(matrix.parent / "missing.yaml"), "-o", "x.yaml"]) == 2
    assert "matrix file not found" in capsys.readouterr().err
    assert main(["kfp", "compile", str(matrix)]) == 2  # -o is required: a field like any verb's
    assert "missing required field 'out'" in capsys.readouterr().err
    assert main(["kfp", "render", str(matrix)]) == 2
    assert "unknown command 'render'" in capsys.readouterr().err


def test_kfp_sub_verbs_take_their_flags_from_their_signatures(capsys):
    """`longctx kfp --help` lists every sub-verb (the pipeline's data step too, no hidden entry), and each
    sub-verb's flags are its function's fields."""
    from longctx.config import VERBS, parameters, resolve

    assert main(["kfp", "--help"]) == 0
    listing = capsys.readouterr().out
    for name in VERBS["kfp"]:  # each with the first words of its docstring
        first = " ".join(resolve(f"kfp {name}").__doc__.split()[:3])
        assert name in listing and first in " ".join(listing.split()), (name, listing)
    for name in VERBS["kfp"]:
        with pytest.raises(SystemExit):
            main(["kfp", name, "--help"])
        text = capsys.readouterr().out
        fields = [p for p in parameters(resolve(f"kfp {name}")).values() if p.kind is not p.POSITIONAL_ONLY]
        assert all(f"--{p.name.replace('_', '-')}" in text for p in fields), (name, text)


