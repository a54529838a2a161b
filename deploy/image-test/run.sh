#!/usr/bin/env bash
# The image test (docs/deploy.md, "What CI runs: the image test"): builds both
# Dockerfile targets with podman and checks them as a user would, then compose
# up/down with the CPU override, then `podman kube play` of the Kubernetes Job's
# and Deployment's pod templates. `make image-test` runs it; .ci/run after the
# test suite.
#
# Needs root (it installs podman, runc, mmdebstrap from Debian and podman-compose
# from PyPI when missing). When the engine cannot run here it says why and
# exits 0 (BNFOLD_IMAGE_TEST_REQUIRED=1 makes that a failure); once the engine
# runs, any failed check fails the script.
#
# Talks only to 127.0.0.1, the containers' own addresses, the Debian mirror and
# PyPI (through the host's pip). Caches under $BNFOLD_IMAGE_TEST_CACHE (default
# /var/cache/bnfold-image-test): the base image tarball (keyed on its mmdebstrap
# command), the wheelhouse (keyed on pyproject.toml and constraints.txt), the
# podman-compose venv and its pip cache; podman's image store keeps the layers
# (keyed by podman on their inputs).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
HERE=$ROOT/deploy/image-test
PY=${BNFOLD_PYTHON:-$ROOT/.venv/bin/python}
CACHE=${BNFOLD_IMAGE_TEST_CACHE:-/var/cache/bnfold-image-test}
SUITE=bookworm
BASE_PACKAGES=python3,python3-venv,python-is-python3,ca-certificates
COMPOSE_VERSION=1.6.0
# A fixed port for the local torch index: the converter's pip layer is cached
# on the build args, TORCH_INDEX_URL among them.
INDEX_PORT=${BNFOLD_IMAGE_TEST_INDEX_PORT:-38471}
SERVICE_IMAGE=bnfold:0.1.0
CONVERTER_IMAGE=bnfold-converter:0.1.0
P=bnfold-it # prefix of everything this script creates
START=$(date +%s)

log() { echo "image-test: $*"; }
skip() {
	log "NOT RUN: $*"
	if [ "${BNFOLD_IMAGE_TEST_REQUIRED:-0}" = 1 ]; then exit 1; fi
	exit 0
}
step_start=0
step() {
	step_end
	step_name=$1
	step_start=$(date +%s)
	log "---- $step_name"
}
step_end() {
	if [ "$step_start" != 0 ]; then
		log "---- $step_name: $(($(date +%s) - step_start)) s (total $(($(date +%s) - START)) s)"
	fi
	step_start=0
}

# ------------------------------------------------------------------ cleanup
WORK=$(mktemp -d /tmp/bnfold-image-test.XXXXXX)
INDEX_PID=
COMPOSE_UP=0
KUBE_UP=0
compose() {
	BNFOLD_PUBLISH=127.0.0.1:$C_HTTP BNFOLD_PUBLISH_GRPC=127.0.0.1:$C_GRPC \
		"$CACHE/podman-compose/bin/podman-compose" -p $P \
		-f docker-compose.yml -f deploy/compose.cpu.yml "$@"
}
cleanup() {
	local rc=$?
	set +e
	if [ "$rc" != 0 ]; then
		log "FAILED (exit $rc) in step: ${step_name:-setup}"
		for c in $(podman ps -a --format '{{.Names}}' 2>/dev/null | grep -E "^($P|bnfold-convert-|bnfold-bnfold|bnfold-wait)"); do
			log "last log lines of $c:"
			podman logs --tail 30 "$c" 2>&1 | sed 's/^/    /'
		done
	fi
	if [ "$KUBE_UP" = 1 ]; then
		for f in "$WORK"/kube/*-pod.yaml; do podman kube down "$f" >/dev/null 2>&1; done
		podman volume rm -f bnfold-models >/dev/null 2>&1
	fi
	[ "$COMPOSE_UP" = 1 ] && compose down -v >/dev/null 2>&1
	for c in $(podman ps -a --format '{{.Names}}' 2>/dev/null | grep "^$P-"); do
		podman rm -f -t 0 "$c" >/dev/null 2>&1
	done
	podman volume rm -f $P-models ${P}_models >/dev/null 2>&1
	[ -n "$INDEX_PID" ] && kill "$INDEX_PID" 2>/dev/null && wait "$INDEX_PID" 2>/dev/null
	rm -rf "$WORK"
	log "finished in $(($(date +%s) - START)) s (exit $rc)"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
check() { "$PY" "$HERE/checks.py" "$@"; }
model_file() { # the served model's file inside a volume (first version found)
	local dir
	dir=$(podman volume inspect --format '{{.Mountpoint}}' "$1")
	find "$dir/digits-mlp" -mindepth 2 -maxdepth 2 -name model.onnx | sort -V | tail -n 1
}

seed_volume() { # a new volume holding the model converted by hand, as fsGroup 10001 would
	podman volume rm -f "$1" >/dev/null 2>&1 || true
	podman volume create "$1" >/dev/null
	local src dst
	src=$(podman volume inspect --format '{{.Mountpoint}}' $P-models)
	dst=$(podman volume inspect --format '{{.Mountpoint}}' "$1")
	cp -a "$src/." "$dst/"
	chgrp 10001 "$dst" && chmod 2775 "$dst"
}

# ----------------------------------------------------------------- install
step "install podman, runc, mmdebstrap; podman-compose $COMPOSE_VERSION"
[ -x "$PY" ] || skip "no project venv at $PY (run 'make setup' first, or set BNFOLD_PYTHON)"
if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v mmdebstrap >/dev/null; then
	[ "$(id -u)" = 0 ] || skip "podman, runc or mmdebstrap is missing and installing them needs root (apt-get install podman runc mmdebstrap)"
	{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		--no-install-recommends podman runc mmdebstrap netavark aardvark-dns iptables \
		catatonit uidmap >"$WORK/apt.log" 2>&1; } ||
		skip "apt-get install podman runc mmdebstrap failed: $(tail -n 3 "$WORK/apt.log" | tr '\n' ' ')"
fi
[ "$(id -u)" = 0 ] || skip "the test runs rootful podman (kube play, pod addresses, volume mountpoints): run it as root"
mkdir -p "$CACHE"
exec 9>"$CACHE/lock"
flock -w 1800 9 || skip "another image test holds $CACHE/lock"
if [ ! -x "$CACHE/podman-compose/bin/podman-compose" ] ||
	[ "$("$CACHE/podman-compose/bin/podman-compose" --version 2>/dev/null | grep -o "podman-compose version $COMPOSE_VERSION")" = "" ]; then
	rm -rf "$CACHE/podman-compose"
	"$PY" -m venv "$CACHE/podman-compose"
	PIP_CACHE_DIR=$CACHE/pip "$CACHE/podman-compose/bin/pip" install --quiet "podman-compose==$COMPOSE_VERSION" ||
		skip "pip install podman-compose==$COMPOSE_VERSION failed"
fi
log "$(podman --version), $(runc --version | sed -n 1p), mmdebstrap $(mmdebstrap --version | awk '{print $2}'), $("$CACHE/podman-compose/bin/podman-compose" --version 2>/dev/null | grep -o 'podman-compose version .*')"

# ------------------------------------------------------------- engine setup
# The sandbox cannot raise resource limits (no CAP_SYS_RESOURCE): podman's
# default ulimits fail with "setrlimit: Operation not permitted", so ask for the
# current hard limits. podman lowers its own nproc limit to kernel.pid_max
# before it starts runc, so nproc is the smaller of the two.
# crun refuses this hybrid cgroup host: runc with cgroupfs.
NOFILE=$(ulimit -Hn)
NPROC=$(ulimit -Hu)
PID_MAX=$(cat /proc/sys/kernel/pid_max)
if [ "$NPROC" = unlimited ] || [ "$NPROC" -gt "$PID_MAX" ]; then NPROC=$PID_MAX; fi
cat >"$WORK/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$NOFILE:$NOFILE", "nproc=$NPROC:$NPROC"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
[network]
network_backend = "netavark"
EOF
export CONTAINERS_CONF=$WORK/containers.conf
podman info >"$WORK/info.log" 2>&1 || skip "podman info failed: $(tail -n 3 "$WORK/info.log" | tr '\n' ' ')"

step "Debian $SUITE base image (mmdebstrap --variant=minbase, podman import)"
BASE_CMD="mmdebstrap --variant=minbase --include=$BASE_PACKAGES --format=tar $SUITE"
KEY=$(echo "$BASE_CMD" | sha256sum | cut -c1-12)
BASE=localhost/$P-base:$KEY
if ! podman image exists "$BASE"; then
	if [ ! -s "$CACHE/base-$KEY.tar" ]; then
		# shellcheck disable=SC2086
		$BASE_CMD "$WORK/base.tar" >"$WORK/mmdebstrap.log" 2>&1 ||
			skip "mmdebstrap could not build a $SUITE base: $(tail -n 3 "$WORK/mmdebstrap.log" | tr '\n' ' ')"
		mv "$WORK/base.tar" "$CACHE/base-$KEY.tar"
		find "$CACHE" -maxdepth 1 -name 'base-*.tar' ! -name "base-$KEY.tar" -delete
	fi
	podman import --quiet --change 'CMD ["/bin/bash"]' "$CACHE/base-$KEY.tar" "$BASE" >/dev/null
fi
log "base image $BASE"
# The engine starts containers here, with a network and a published port?
probe_port=$(free_port)
podman run --rm --name $P-probe -p "127.0.0.1:$probe_port:80" "$BASE" true >"$WORK/probe.log" 2>&1 ||
	skip "podman cannot start a container here: $(tail -n 3 "$WORK/probe.log" | tr '\n' ' ')"
log "podman starts containers (runc, cgroupfs, netavark)"

# ------------------------------------------------------------------- build
step "wheelhouse: the images' Python packages, served on 127.0.0.1:$INDEX_PORT"
# pip on the host downloads every wheel both images install (its configuration
# finds the torch 2.13.0+cpu wheel, which the PyTorch index does not serve to
# this machine); a PEP 503 index on 127.0.0.1 serves them to the builds, so pip
# inside the build needs neither PyPI nor TLS. Keyed on what decides the set.
PLATFORMS=()
for t in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux_2_12 manylinux2010 manylinux_2_5 manylinux1; do
	PLATFORMS+=(--platform "${t}_x86_64")
done
WHEEL_KEY=$(cat pyproject.toml constraints.txt <(echo "${PLATFORMS[*]} py3.11 setuptools>=77") | sha256sum | cut -c1-12)
INDEX=$CACHE/index-$WHEEL_KEY
if [ ! -e "$INDEX/complete" ]; then
	rm -rf "$INDEX" && mkdir -p "$INDEX/wheels"
	# The train extra covers the service's core dependencies too; setuptools
	# is the build backend pip fetches for the project itself.
	"$PY" -m pip download --quiet --only-binary=:all: --python-version 3.11 "${PLATFORMS[@]}" \
		-c constraints.txt -d "$INDEX/wheels" '.[train]' 'setuptools>=77' >"$WORK/pip.log" 2>&1 ||
		{ grep -v 'is ignored' "$WORK/pip.log" | tail -n 20; exit 1; }
	"$PY" - "$INDEX" <<'PYEOF'
import re, sys
from pathlib import Path
index = Path(sys.argv[1])
for whl in (index / "wheels").glob("*.whl"):
    name = re.sub(r"[-_.]+", "-", whl.name.split("-")[0]).lower()
    (index / "simple" / name).mkdir(parents=True, exist_ok=True)
    (index / "simple" / name / whl.name).hardlink_to(whl)
PYEOF
	ls "$INDEX"/simple/torch/torch-*+cpu-*.whl >/dev/null || { log "no torch +cpu wheel in the wheelhouse"; exit 1; }
	touch "$INDEX/complete"
	find "$CACHE" -maxdepth 1 -name 'index-*' ! -name "index-$WHEEL_KEY" -exec rm -rf {} +
fi
"$PY" -m http.server --bind 127.0.0.1 --directory "$INDEX" "$INDEX_PORT" >"$WORK/index.log" 2>&1 &
INDEX_PID=$!
for _ in $(seq 100); do
	[ "$("$PY" -c "import urllib.request as r; print(r.urlopen('http://127.0.0.1:$INDEX_PORT/simple/torch/').status)" 2>/dev/null)" = 200 ] && break
	kill -0 "$INDEX_PID" 2>/dev/null || { cat "$WORK/index.log"; exit 1; }
	sleep 0.2
done
log "$(find "$INDEX/wheels" -name '*.whl' | wc -l) wheels, $(du -sh "$INDEX/wheels" | cut -f1), $(basename "$(ls "$INDEX"/simple/torch/*.whl)")"

# pip inside the build reads /root/.config/pip/pip.conf (index-url: the local
# index). The folder is an overlay mount over /root, which the base image has,
# so nothing is created in a layer and nothing the build writes there stays
# (checked below).
mkdir -p "$CACHE/build/root/.config/pip"
printf '[global]\nindex-url = http://127.0.0.1:%s/simple\n' "$INDEX_PORT" >"$CACHE/build/root/.config/pip/pip.conf"
BUILD=(podman build --format docker --layers --pull=never --network host
	--build-arg "CUDA_IMAGE=$BASE" --build-arg "CONVERTER_IMAGE=$BASE"
	--build-arg "TORCH_INDEX_URL=http://127.0.0.1:$INDEX_PORT/simple"
	-v "$CACHE/build/root:/root:O" -f Dockerfile)

step "build the service image (--target service)"
"${BUILD[@]}" --target service -t $SERVICE_IMAGE . >"$WORK/build-service.log" 2>&1 ||
	{ tail -n 40 "$WORK/build-service.log"; exit 1; }
log "$(grep -c 'Using cache' "$WORK/build-service.log" || true) steps from the layer cache"

step "build the converter image (--target converter)"
"${BUILD[@]}" --target converter -t $CONVERTER_IMAGE . >"$WORK/build-converter.log" 2>&1 ||
	{ tail -n 40 "$WORK/build-converter.log"; exit 1; }
log "$(grep -c 'Using cache' "$WORK/build-converter.log" || true) steps from the layer cache"
kill "$INDEX_PID" && wait "$INDEX_PID" 2>/dev/null || true
INDEX_PID=

step "image contents: HEALTHCHECK kept, user 10001, nothing of the build's pip.conf"
for img in $SERVICE_IMAGE $CONVERTER_IMAGE; do
	user=$(podman image inspect --format '{{.Config.User}}' "$img")
	[ "$user" = "10001:10001" ] || { log "$img runs as '$user', expected 10001:10001"; exit 1; }
	mnt=$(podman image mount "$img")
	for f in root/.config etc/pip.conf; do
		[ ! -e "$mnt/$f" ] || { log "$img contains /$f (a build mount leaked)"; podman image unmount "$img" >/dev/null; exit 1; }
	done
	podman image unmount "$img" >/dev/null
done
hc=$(podman image inspect --format '{{json .Config.Healthcheck}}' $SERVICE_IMAGE)
case $hc in *health/ready*) log "$SERVICE_IMAGE: HEALTHCHECK $hc" ;; *)
	log "$SERVICE_IMAGE has no HEALTHCHECK ($hc)"
	exit 1
	;;
esac
podman image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E "/bnfold(-converter)?:0.1.0 " | sed 's/^/image-test: /'

# ------------------------------------------------------- the images, by hand
step "converter image: convert digits-mlp into a volume"
podman volume rm -f $P-models >/dev/null 2>&1 || true
podman volume create $P-models >/dev/null
podman run --rm --name $P-convert --network none -v $P-models:/models $CONVERTER_IMAGE
MODEL=$(model_file $P-models)
[ -n "$MODEL" ] || { log "the converter wrote no digits-mlp/<version>/model.onnx"; exit 1; }
log "converted: ${MODEL#"$(podman volume inspect --format '{{.Mountpoint}}' $P-models)"}"

step "service image: serve the volume (read-only root, no capabilities)"
S_HTTP=$(free_port)
S_GRPC=$(free_port)
# No systemd here to time the periodic healthchecks (podman says so on
# stderr): the HEALTHCHECK command is run below with `podman healthcheck run`.
podman run -d --name $P-service --read-only --cap-drop=all --security-opt no-new-privileges \
	-v $P-models:/models:ro -p "127.0.0.1:$S_HTTP:8000" -p "127.0.0.1:$S_GRPC:8001" \
	-e BNFOLD_DEVICE=cpu -e BNFOLD_DRAIN_S=3 $SERVICE_IMAGE >/dev/null 2>"$WORK/run-service.log" ||
	{ cat "$WORK/run-service.log"; exit 1; }
check ready "http://127.0.0.1:$S_HTTP" --container $P-service
check infer "127.0.0.1:$S_HTTP" "127.0.0.1:$S_GRPC" digits-mlp "$MODEL"
podman healthcheck run $P-service >/dev/null || { log "HEALTHCHECK: unhealthy"; exit 1; }
log "HEALTHCHECK command: healthy"
check security $P-service
check drain "http://127.0.0.1:$S_HTTP" $P-service
podman rm $P-service >/dev/null 2>&1

# ----------------------------------------------------------------- compose
step "podman-compose up with the CPU override (converter, then service)"
C_HTTP=$(free_port)
C_GRPC=$(free_port)
COMPOSE_UP=1
compose down -v >/dev/null 2>&1 || true
# The models volume already holds the model converted above, so the compose
# converter takes its "already has a version" path (one conversion per run).
seed_volume ${P}_models
compose_since=$(date -u +%Y-%m-%dT%H:%M:%SZ)
compose up -d --no-build >"$WORK/compose-up.log" 2>&1 || { tail -n 30 "$WORK/compose-up.log"; exit 1; }
ctr() { podman ps -a --filter "label=com.docker.compose.project=$P" --filter "label=com.docker.compose.service=$1" --format '{{.Names}}' | sed -n 1p; }
conv=$(ctr converter)
svc=$(ctr service)
[ -n "$conv" ] && [ -n "$svc" ] || { log "compose created converter='$conv' service='$svc'"; exit 1; }
[ "$(podman inspect --format '{{.State.ExitCode}}' "$conv")" = 0 ] || { log "compose converter exited non-zero"; exit 1; }
# The order from podman's events: the converter's first run ended before the
# service started. (podman-compose creates the service with --requires on the
# converter, so podman starts the converter once more beside the service; it
# finds the model and exits 0 again.)
timeout 60 podman events --stream=false --since "$compose_since" --filter type=container \
	--format '{{.Status}} {{.Name}}' >"$WORK/events.log"
order=$(grep -E "^(died $conv|start $svc)\$" "$WORK/events.log" | sed -n 1p)
[ "$order" = "died $conv" ] || { log "the service started before the converter's first run ended"; exit 1; }
grep -q 'already has a version' <<<"$(podman logs "$conv" 2>&1)" || { log "compose converter did not find the model"; exit 1; }
log "compose: $conv exited 0 (model already there), then $svc started"
check ready "http://127.0.0.1:$C_HTTP" --container "$svc"
check infer "127.0.0.1:$C_HTTP" "127.0.0.1:$C_GRPC" digits-mlp "$(model_file ${P}_models)"
podman healthcheck run "$svc" >/dev/null || { log "compose service: unhealthy"; exit 1; }
log "compose service HEALTHCHECK: healthy"

step "podman-compose down"
compose down -v >"$WORK/compose-down.log" 2>&1 || { tail -n 30 "$WORK/compose-down.log"; exit 1; }
COMPOSE_UP=0
left=$(podman ps -a --filter "label=com.docker.compose.project=$P" --format '{{.Names}}')
[ -z "$left" ] || { log "left after down: $left"; exit 1; }
log "compose down: no container left"

# -------------------------------------------------------------- kube play
step "podman kube play: the Job's and the Deployment's pod templates"
check pods deploy/k8s "$WORK/kube"
KUBE_UP=1
podman volume rm -f bnfold-models >/dev/null 2>&1 || true
# The PersistentVolumeClaim as a podman volume, group-owned and group-writable
# by the pods' fsGroup (10001), as the kubelet would make it, holding the model
# converted above: the Job takes its "already has a version" path.
seed_volume bnfold-models
podman kube play "$WORK/kube/job-pod.yaml" >"$WORK/kube-job.log" 2>&1 || { cat "$WORK/kube-job.log"; exit 1; }
job=bnfold-convert-convert
code=$(podman wait "$job")
[ "$code" = 0 ] || { log "Job pod container $job exited $code"; exit 1; }
grep -q 'already has a version' <<<"$(podman logs "$job" 2>&1)" || { log "the Job did not find the model"; exit 1; }
log "Job pod: $job exited 0 (model already there)"
podman kube play "$WORK/kube/deployment-pod.yaml" >"$WORK/kube-deploy.log" 2>&1 || { cat "$WORK/kube-deploy.log"; exit 1; }
infra=$(podman pod inspect --format '{{.InfraContainerID}}' bnfold)
ip=$(podman inspect --format '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$infra")
[ -n "$ip" ] || { log "the Deployment pod has no address"; exit 1; }
check ready "http://$ip:8000" --container bnfold-bnfold
check infer "$ip:8000" "$ip:8001" digits-mlp "$(model_file bnfold-models)"
check security bnfold-bnfold
log "Deployment pod: serving on $ip:8000 and :8001"

step "podman kube down"
for f in "$WORK"/kube/*-pod.yaml; do
	# (stderr: podman's complaint that there is no systemd to stop healthcheck timers)
	podman kube down "$f" >/dev/null 2>"$WORK/kube-down.log" || { cat "$WORK/kube-down.log"; exit 1; }
done
podman volume rm -f bnfold-models >/dev/null
KUBE_UP=0
[ -z "$(podman pod ls --format '{{.Name}}' | grep -E '^bnfold(-convert)?$' || true)" ] || { log "pods left after kube down"; exit 1; }
step_end
log "PASSED: both images built and checked, compose up/down, kube play"
