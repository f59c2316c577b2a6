#!/bin/sh
# What keeps the Makefile's container targets from using Docker, in one line; nothing when all is well.
# Usage: docker/engine.sh [DOCKER]. The Makefile asks once per run, and only for a container target.
docker=${1:-docker}
v2_hint="install Docker's docker-compose-plugin package (apt/dnf from download.docker.com), or put the v2 binary from https://github.com/docker/compose/releases at ~/.docker/cli-plugins/docker-compose"
if ! "$docker" info >/dev/null 2>&1; then
    echo "no usable docker engine here ('$docker info' failed: no daemon running, or no permission on its socket)"
    exit 0
fi
version=$("$docker" compose version --short 2>/dev/null) || version=
case $version in
    "")
        if command -v docker-compose >/dev/null 2>&1; then
            echo "the docker daemon answers but the compose v2 plugin ('$docker compose') is missing; the docker-compose found is v1, which cannot parse docker/compose.yaml: $v2_hint"
        else
            echo "the docker daemon answers but the compose plugin ('$docker compose') is missing: $v2_hint"
        fi ;;
    1.* | v1.*)
        echo "'$docker compose' is compose $version (v1), which cannot parse docker/compose.yaml: $v2_hint" ;;
esac
