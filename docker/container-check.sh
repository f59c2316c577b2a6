#!/usr/bin/env bash
# `make container-check`: the container workflow run for real, on the CPU, the way a user runs it:
#   make build (a CPU image from BASE_IMAGE) -> image checks (non-root user, torch build, only the allow-listed
#   files, another uid shares the heavy layers) -> make up -> make repl (tiny convert + fine-tune on the mounted
#   folders) -> ownership of the written files -> make down -> make repl (starts the service again; runs
#   tests/test_convert.py) -> make tensorboard (curl) -> make down.
# Needs a docker engine with the compose v2 plugin and BASE_IMAGE: a Debian/Ubuntu image whose python3 is
# >= 3.11 and that reaches PyPI. torch==2.13.0+cpu comes from the base image's PIP_FIND_LINKS (the default,
# local/bookworm-python:cpu, made by a machine-setup script, has it) or from TORCH_INDEX_URL
# (https://download.pytorch.org/whl/cpu). Nothing is downloaded inside the running containers.
# Everything it writes goes to a temporary folder (removed on success), its own compose project and image
# (CHECK_PROJECT, default longctx-check: `docker image rm longctx-check:latest` frees the space), and
# TensorBoard port CHECK_TENSORBOARD_PORT (16006): a running `make up` of the checkout is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

base_image=${BASE_IMAGE:-local/bookworm-python:cpu}
project=${CHECK_PROJECT:-longctx-check}
port=${CHECK_TENSORBOARD_PORT:-16006}
docker=${DOCKER:-docker}
work=$(mktemp -d "${TMPDIR:-/tmp}/longctx-container-check.XXXXXX")
start=$SECONDS
say() { printf '[container-check %4ds] %s\n' $((SECONDS - start)) "$*"; }
fail() { say "FAILED: $*"; say "logs and files kept in $work"; exit 1; }

# The same values the Makefile derives (root is mapped to 1000:1000). ENV_FILE=.env.example: your .env
# (paths, GPUs, project name) does not change what is checked.
uid=$(id -u) gid=$(id -g)
[[ $uid != 0 ]] || uid=1000
[[ $gid != 0 ]] || gid=1000
settings=(ENV_FILE=.env.example PROJECT_NAME="$project" BASE_IMAGE="$base_image" TORCH_VARIANT=cpu
          TORCH_INDEX_URL="${TORCH_INDEX_URL:-}" GPU_IDS=none TENSORBOARD_PORT="$port" DOCKER="$docker"
          DATA_DIR="$work/data" MODEL_DIR="$work/models" LOG_DIR="$work/runs" HF_HOME="$work/hf-cache")
# nice: the build's steps run under the daemon, so this lowers only make and compose; see docs/CONTAINERS.md.
mk() { nice -n 10 make --no-print-directory "${settings[@]}" "$@"; }
# step NAME LOG make-args...: runs `make ARGS` with its output in $work/LOG, says how long it took.
step() {
    local name=$1 log=$work/$2 t=$SECONDS
    shift 2
    mk "$@" >"$log" 2>&1 || { tail -n 40 "$log"; fail "$name (make $1; log $log)"; }
    say "$name: $((SECONDS - t)) s"
}
running() { "$docker" ps --filter "label=com.docker.compose.project=$project" --format '{{.Labels}}' \
    | grep -o 'com.docker.compose.service=[a-z]*' | sed 's/.*=//' | sort | tr '\n' ' '; }
cleanup() {
    local rc=$?
    mk down >/dev/null 2>&1 || true
    if [[ $rc == 0 ]]; then rm -rf "$work"; fi
}
trap cleanup EXIT

say "base image $base_image, project $project, uid:gid $uid:$gid, work folder $work"
"$docker" image inspect "$base_image" >/dev/null 2>&1 || fail "no image $base_image here (docker pull it, or build it)"

# --- build and the image itself
step "make build" build.log build
image=$project:latest
size=$("$docker" image inspect -f '{{.Size}}' "$image")
say "image $image: $((size / 1000000)) MB"
user=$("$docker" image inspect -f '{{.Config.User}}' "$image")
[[ $user == "$uid:$gid" ]] || fail "image user is '$user', expected $uid:$gid"
torch=$("$docker" run --rm "$image" python -c 'import torch; print(torch.__version__, torch.version.cuda)')
[[ $torch == "2.13.0+cpu None" ]] || fail "torch in the image: $torch (expected the CPU build)"
say "image user $user (non-root), torch $torch"
# .dockerignore is an allow-list: /workspace holds its top-level names (and the editable install's egg-info).
allowed=$(sed -n 's#^!\([^/]*\).*#\1#p' .dockerignore | sort -u | tr '\n' ' ')
present=$("$docker" run --rm "$image" bash -c 'ls -A /workspace | grep -v "\.egg-info$"' | sort | tr '\n' ' ')
[[ $present == "$allowed" ]] || fail "/workspace in the image holds '$present', .dockerignore allows '$allowed'"
say "image /workspace: $present"

# Another uid rebuilds only the layers from the user on (the Dockerfile's RUN/COPY before `ARG USER_UID`
# stay shared: venv, torch, dependencies).
step "make build for another uid ($((uid + 1)))" build-uid.log build PROJECT_NAME="$project-uid" LONGCTX_UID=$((uid + 1))
layers() { "$docker" image inspect -f '{{range .RootFS.Layers}}{{println .}}{{end}}' "$1" | sed '/^$/d'; }
base_layers=$(layers "$base_image" | wc -l)
heavy=$(sed -n '/^ARG USER_UID/q;/^\(RUN\|COPY\) /p' docker/Dockerfile | wc -l)
shared=$(paste -d ' ' <(layers "$image") <(layers "$project-uid:latest") | awk '$1 != $2 {exit} {n++} END {print n + 0}')
total=$(layers "$image" | wc -l)
(( shared >= base_layers + heavy )) \
    || fail "uid $((uid + 1)) shares only $shared of $total layers; expected >= $((base_layers + heavy))"
say "uid $((uid + 1)): the first $shared of $total layers shared (base $base_layers + $heavy before the user)"
"$docker" image rm "$project-uid:latest" >/dev/null

# --- up, a tiny job through make repl, ownership
step "make up" up.log up
[[ $(running) == "longctx tensorboard " ]] || fail "running services: '$(running)'"
step "make repl run=docker/container_check.py (convert + fine-tune)" job.log repl run=docker/container_check.py
result=$(sed -n 's/^CHECK //p' "$work/job.log")
python3 - "$result" "$uid" "$gid" <<'EOF' || fail "job result: $result"
import json, sys
r = json.loads(sys.argv[1])
assert (r["uid"], r["gid"]) == (int(sys.argv[2]), int(sys.argv[3])), r
assert {"metrics.json", "predictions.json", "run.json", "model", "tensorboard"} <= set(r["files"]), r["files"]
print(f"[container-check] container ran as {r['uid']}:{r['gid']}; eval EM {r['eval']['exact_match']:.1f} "
      f"F1 {r['eval']['f1']:.1f} (a tiny random model: the numbers only show the pipeline ran)")
EOF
written=$(find "$work/data" "$work/models" "$work/runs" -mindepth 1 | wc -l)
foreign=$(find "$work/data" "$work/models" "$work/runs" \( ! -uid "$uid" -o ! -gid "$gid" \) -printf '%u:%g %p\n')
[[ $written -gt 10 && -z $foreign ]] || fail "$written files written; not $uid:$gid: $foreign"
say "$written files on the mounted folders, all owned by $uid:$gid"
step "make down" down.log down
[[ -z $(running) ]] || fail "still running after make down: $(running)"

# --- repl starts the service again; the conversion tests inside
step "make repl run=\"-m pytest tests/test_convert.py\" (after make down)" pytest.log \
    repl run="-m pytest -q -p no:cacheprovider tests/test_convert.py"
grep -q "the longctx service is not running: starting it" "$work/pytest.log" || fail "make repl did not start the service"
say "$(grep -E '^[0-9]+ (passed|failed)|passed|failed' "$work/pytest.log" | tail -n 1)"

# --- TensorBoard answers and lists the run
step "make tensorboard" tensorboard.log tensorboard
for _ in $(seq 60); do
    runs=$(curl -fsS "http://127.0.0.1:$port/data/runs" 2>/dev/null) && [[ $runs == *check-finetune* ]] && break
    sleep 1
done
[[ ${runs:-} == *check-finetune* ]] || fail "TensorBoard on port $port: '${runs:-no answer}'"
say "TensorBoard http://127.0.0.1:$port/data/runs: $runs"
step "make down" down2.log down
[[ -z $(running) ]] || fail "still running after make down: $(running)"
say "passed"
