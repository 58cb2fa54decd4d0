#!/usr/bin/env bash
# captiond's Docker image and compose.yaml, for real, with Debian's docker.io: builds the image from a fresh
# clone and checks non-root (PUID/PGID), tini as PID 1, captions, the healthcheck, status and retry through
# `docker exec`, a clean stop, coming back after a dockerd restart, `--user 1500:1500` with a fresh and with a
# foreign state volume, the dependency layer cached across a README edit, and compose.yaml with stand-ins for
# Ollama and PhotoPrism: up with the model registry unreachable, captions, and every service back after a
# dockerd restart.
#
# Run as root on Debian 12: sudo bash tests/deploy/docker.sh. Needs docker.io (its dockerd is started with
# the vfs storage driver when none runs) and docker-compose. When no image registry is reachable, the base
# images are stand-ins made with debootstrap (python:3.12-slim-bookworm is then Debian's Python 3.11 in a
# venv; ollama/ollama runs the Ollama emulator; photoprism/photoprism only sleeps). Every wait is for a
# condition with a generous deadline. Prints one line per check and "N passed, N failed" at the end.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=tests/deploy/lib.sh
. "$REPO/tests/deploy/lib.sh"
WORK=$(mktemp -d /var/tmp/captiond-docker.XXXXXX)
NAME=captiond-deploy-test
IMAGE=captiond-deploy/captiond:test
DOCKERD_PID=""
SERVER_PID=""

cleanup() {
    local status=$?
    docker rm -f "$NAME-1" "$NAME-2" "$NAME-3" >/dev/null 2>&1 || true
    (cd "$WORK/src" 2>/dev/null && docker-compose -p "$NAME" down -v -t 30 >/dev/null 2>&1) || true
    docker volume rm "$NAME-state" "$NAME-state2" >/dev/null 2>&1 || true
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; fi
    if [ -n "$DOCKERD_PID" ]; then kill "$DOCKERD_PID" 2>/dev/null || true; wait "$DOCKERD_PID" 2>/dev/null || true; fi
    if [ "$status" -eq 0 ] && [ "$failed" -eq 0 ]; then rm -rf "$WORK"; else say "kept $WORK"; fi
}
trap cleanup EXIT

[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 2; }
command -v docker >/dev/null && command -v docker-compose >/dev/null \
    || { echo "needs docker.io and docker-compose: apt-get install -y docker.io docker-compose" >&2; exit 2; }

start_dockerd() {
    dockerd --storage-driver=vfs >>"$WORK/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    wait_until 90 docker info
}
if ! docker info >/dev/null 2>&1; then
    say "starting Debian's dockerd (vfs)"
    start_dockerd || { tail -20 "$WORK/dockerd.log" >&2; exit 1; }
fi
docker version --format 'docker {{.Server.Version}}' | sed 's/^/server: /'

# -- base images: the registry's, else stand-ins made with debootstrap -------------------------------------------
mkdir -p "$WORK/empty"
if ! docker image inspect python:3.12-slim-bookworm >/dev/null 2>&1 \
        && ! timeout 60 docker pull -q python:3.12-slim-bookworm >/dev/null 2>&1; then
    say "no image registry: stand-in base images from a debootstrapped Debian 12"
    if ! docker image inspect captiond-deploy/debian:bookworm >/dev/null 2>&1; then
        debian_root "$WORK/base"
        tar -C "$WORK/base" -c . | docker import - captiond-deploy/debian:bookworm >/dev/null
        rm -rf "$WORK/base"
    fi
    # A machine behind a TLS-inspecting proxy needs its local CAs in the image (pip reads PIP_CERT).
    cp /usr/local/share/ca-certificates/*.crt "$WORK/empty/" 2>/dev/null || true
    docker build -q --network host -t python:3.12-slim-bookworm -f - "$WORK/empty" >/dev/null <<'EOF'
FROM captiond-deploy/debian:bookworm
COPY . /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null 2>&1; python3 -m venv /usr/local/python
ENV PATH=/usr/local/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt
EOF
fi

# -- the image, from a fresh clone ----------------------------------------------------------------------------------
git clone -q --no-hardlinks "$REPO" "$WORK/src"
git -C "$WORK/src" log --oneline -1 | sed 's/^/commit /'
say "docker build"
check "the image builds" sh -c "docker build --network host -t $IMAGE $WORK/src >$WORK/build.log 2>&1"
echo "(an edit)" >>"$WORK/src/README.md"
docker build --network host -t "$IMAGE-edited" "$WORK/src" >"$WORK/build2.log" 2>&1 &
rebuild=$!
past_dependencies() { grep -q 'COPY README.md' "$WORK/build2.log"; }
wait_until 600 past_dependencies || true
kill "$rebuild" 2>/dev/null || true   # the steps after README.md do not matter here
wait "$rebuild" 2>/dev/null || true
dependency_layer_cached() { grep -A1 'RUN pip install --no-cache-dir $(python' "$WORK/build2.log" | grep -q 'Using cache'; }
check "a README edit reuses the dependency layer" dependency_layer_cached
git -C "$WORK/src" checkout -q README.md

# -- one container beside the emulator (host network: the emulator listens on the host's loopback) -----------------
python3 "$REPO/tests/deploy/model_server.py" 0.2 >"$WORK/model-server.log" 2>&1 &
SERVER_PID=$!
wait_until 30 test -s "$WORK/model-server.log"
PORT=$(head -1 "$WORK/model-server.log")
mkdir -p "$WORK/library"       # owned by root and empty, as Docker creates a missing bind-mount source
run_captiond() {  # run_captiond NAME EXTRA-ARGUMENTS...
    local name=$1
    shift
    docker run -d --name "$name" --network host --restart unless-stopped -e "OLLAMA_BASE_URL=http://127.0.0.1:$PORT" \
        -v "$WORK/library:/photoprism/originals" "$@" "$IMAGE" >/dev/null
}
logs_have() { docker logs "$1" 2>&1 | grep -q -- "$2"; }
running() { [ "$(docker inspect -f '{{.State.Running}}' "$1" 2>/dev/null)" = true ]; }
run_captiond "$NAME-1" -v "$NAME-state:/state"
check "an empty root-owned library folder is handed to PUID:PGID" wait_until 60 logs_have "$NAME-1" "now belongs to 1000:1000"
for index in 1 2 3 4 5 6; do cp "$REPO/tests/fixtures/Canon_PowerShot_S40.jpg" "$WORK/library/photo-$index.jpg"; done
chown -R 1000:1000 "$WORK/library"
pid1() { [ "$(docker exec "$NAME-1" cat /proc/1/comm)" = tini ]; }
check "tini is PID 1" pid1
daemon_uid() {
    docker exec "$NAME-1" sh -c 'for d in /proc/[0-9]*; do [ "$(cat $d/comm 2>/dev/null)" = captiond ] && stat -c %u $d; done' \
        | grep -qx 1000
}
check "captiond runs as 1000 (PUID), not root" wait_until 30 daemon_uid
sidecars() { [ "$(find "$WORK/library" -name '*.xmp' -user 1000 | wc -l)" -eq 6 ]; }
check "captions appear, in sidecars owned by 1000" wait_until 120 sidecars
healthy() { [ "$(docker inspect -f '{{.State.Health.Status}}' "$NAME-1")" = healthy ]; }
check "the healthcheck says healthy" wait_until 180 healthy
docker exec "$NAME-1" captiond status >"$WORK/status.txt" 2>&1 || true
check "docker exec ... captiond status: the daemon's server answers, 6 done" \
    sh -c "grep -q '6 done' $WORK/status.txt && grep -q '127.0.0.1:$PORT/api/generate: ok' $WORK/status.txt"
retry_as_root() {
    docker exec "$NAME-1" captiond retry >"$WORK/retry.txt" 2>&1 \
        && [ -z "$(docker exec "$NAME-1" find /state -user root)" ]
}
check "docker exec ... captiond retry (root) acts as the daemon's user" retry_as_root

if [ -n "$DOCKERD_PID" ]; then
    say "restarting dockerd"
    kill "$DOCKERD_PID"; wait "$DOCKERD_PID" 2>/dev/null || true
    start_dockerd
    check "the container comes back after a dockerd restart" wait_until 120 running "$NAME-1"
    started_twice() { [ "$(docker logs "$NAME-1" 2>&1 | grep -c 'watching /photoprism/originals')" -ge 2 ]; }
    wait_until 60 started_twice || true   # a SIGTERM before Python installed its handler would end it with 143
else
    say "skipped: dockerd restart (this script did not start the running dockerd)"
fi
check "docker stop ends it cleanly (exit 0)" sh -c "docker stop -t 30 $NAME-1 >/dev/null \
    && [ \"\$(docker inspect -f '{{.State.ExitCode}}' $NAME-1)\" = 0 ]"
check "the daemon logged its stop" logs_have "$NAME-1" "stopped"
docker rm -f "$NAME-1" >/dev/null

# -- docker run --user 1500:1500 ----------------------------------------------------------------------------------------
chown -R 1500:1500 "$WORK/library"
run_captiond "$NAME-2" --user 1500:1500 -v "$NAME-state2:/state"
check "--user 1500:1500 with a fresh state volume works" wait_until 60 logs_have "$NAME-2" "watching"
docker rm -f "$NAME-2" >/dev/null
run_captiond "$NAME-3" --user 1500:1500 -v "$NAME-state:/state"
check "--user 1500:1500 with a volume of another user: a clear message" \
    wait_until 60 logs_have "$NAME-3" "is not writable by 1500:1500"
still_waiting() { running "$NAME-3" && [ "$(docker inspect -f '{{.RestartCount}}' "$NAME-3")" = 0 ]; }
check "and a wait, not a crash loop" still_waiting
docker rm -f "$NAME-3" >/dev/null
kill "$SERVER_PID" 2>/dev/null || true
SERVER_PID=""

# -- compose.yaml with stand-ins for Ollama and PhotoPrism (no registry here) ---------------------------------------
if ! docker image inspect ollama/ollama:latest >/dev/null 2>&1 && ! timeout 60 docker pull -q ollama/ollama:latest >/dev/null 2>&1; then
    mkdir -p "$WORK/ollama"
    cp "$REPO/tests/emulator.py" "$REPO/tests/deploy/model_server.py" "$REPO/tests/deploy/ollama_standin.py" "$WORK/ollama/"
    docker build -q --network host -t ollama/ollama:latest -f - "$WORK/ollama" >/dev/null <<'EOF'
FROM python:3.12-slim-bookworm
COPY emulator.py model_server.py ollama_standin.py /opt/ollama/deploy/
RUN mkdir -p /opt/ollama && printf '#!/bin/sh\nexec python3 /opt/ollama/deploy/ollama_standin.py "$@"\n' >/usr/bin/ollama \
    && chmod 755 /usr/bin/ollama
ENTRYPOINT ["/usr/bin/ollama"]
CMD ["serve"]
EOF
fi
if ! docker image inspect photoprism/photoprism:latest >/dev/null 2>&1 && ! timeout 60 docker pull -q photoprism/photoprism:latest >/dev/null 2>&1; then
    printf 'FROM captiond-deploy/debian:bookworm\nCMD ["sleep", "infinity"]\n' \
        | docker build -q -t photoprism/photoprism:latest - >/dev/null
fi
cd "$WORK/src"
check "docker-compose config accepts compose.yaml" sh -c "docker-compose -p $NAME config -q"
mkdir -p originals storage && cp -n vision.yml.example vision.yml && chown -R 1000:1000 originals storage
for index in 1 2 3; do cp "$REPO/tests/fixtures/Canon_PowerShot_S40.jpg" "originals/photo-$index.jpg"; done
chown -R 1000:1000 originals
docker tag "$IMAGE" "${NAME}_captiond:latest"   # the image built above is compose's `build: .` (v1 naming)
say "docker-compose up -d (model registry unreachable; CAPTIOND_MODEL not in Ollama)"
check "compose up exits 0 with the registry unreachable and the model missing" \
    sh -c "CAPTIOND_MODEL=missing-model:1b docker-compose -p $NAME up -d >$WORK/compose-up.log 2>&1"
compose_running() { [ "$(docker-compose -p "$NAME" ps -q "$1" | xargs -r docker inspect -f '{{.State.Running}}')" = true ]; }
check "captiond starts anyway (not gated on the pull)" wait_until 120 compose_running captiond
compose_sidecars() { [ "$(find originals -name '*.xmp' | wc -l)" -eq 3 ]; }
check "captions appear under compose (the model in vision.yml is there)" wait_until 180 compose_sidecars
if [ -n "$DOCKERD_PID" ]; then
    say "restarting dockerd"
    kill "$DOCKERD_PID"; wait "$DOCKERD_PID" 2>/dev/null || true
    start_dockerd
    all_back() { compose_running captiond && compose_running ollama && compose_running photoprism; }
    check "every service comes back after a dockerd restart" wait_until 180 all_back
fi
check "compose down stops everything" sh -c "docker-compose -p $NAME down -v -t 30 >/dev/null 2>&1"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
