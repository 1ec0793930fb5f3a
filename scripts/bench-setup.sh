#!/usr/bin/env bash
# Set up what benchmarks/bench_foundation.py compares sandlot against:
#   - bubblewrap (the floor), Docker (engine + a locally built Debian image), debootstrap;
#   - the Python peers: SWE-ReX (+ aiohttp, which it imports but does not declare),
#     llm-sandbox, jupyter_client + ipykernel.
# Idempotent: every step is skipped when its result is already there. Each step that fails is
# reported and the rest go on; the benchmark marks a missing peer as skipped in its table.
#
#   bash scripts/bench-setup.sh            # everything
#   SKIP_DOCKER=1 bash scripts/bench-setup.sh
#   BENCH_IMAGE=name:tag bash scripts/bench-setup.sh
set -uo pipefail

IMAGE="${BENCH_IMAGE:-sandlot-bench:bookworm}"
SUITE="${BENCH_SUITE:-bookworm}"
PYTHON="${PYTHON:-python}"
DOCKERD_LOG="${DOCKERD_LOG:-/tmp/sandlot-bench-dockerd.log}"
failed=()

say() { printf '[bench-setup] %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi
}

apt_install() {
    # apt_install CMD PACKAGE...: install the packages unless CMD is already on PATH
    local cmd="$1"; shift
    if command -v "$cmd" >/dev/null 2>&1; then return 0; fi
    say "installing $* from Debian's packages"
    if [ -z "${_apt_updated:-}" ]; then as_root apt-get update -q >/dev/null && _apt_updated=1; fi
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q "$@" >/dev/null
}

mirror() {
    # The first URIs: line of the deb822 sources, else the first deb line of sources.list.
    local uri
    uri=$(grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1 | awk '{print $2}')
    if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
        uri=$(grep -E '^deb ' /etc/apt/sources.list | head -n1 | awk '{print $2}')
    fi
    printf '%s' "$uri"
}

docker_bin() {
    # Debian's docker.io client matches its engine; prefer it over any other client on PATH.
    if [ -x /usr/bin/docker ]; then echo /usr/bin/docker; else command -v docker; fi
}

start_dockerd() {
    local docker
    docker=$(docker_bin) || return 1
    if "$docker" info >/dev/null 2>&1; then return 0; fi
    command -v dockerd >/dev/null || return 1
    say "starting dockerd (log: $DOCKERD_LOG)"
    as_root sh -c "nohup dockerd >'$DOCKERD_LOG' 2>&1 &"
    for _ in $(seq 1 60); do
        if "$docker" info >/dev/null 2>&1; then return 0; fi
        sleep 1
    done
    say "dockerd did not answer within 60 s; see $DOCKERD_LOG"
    return 1
}

build_image() {
    local docker rootfs url
    docker=$(docker_bin) || return 1
    if "$docker" image inspect "$IMAGE" >/dev/null 2>&1; then
        say "image $IMAGE is cached"
        return 0
    fi
    url=$(mirror)
    if [ -z "$url" ]; then say "no apt mirror found in /etc/apt"; return 1; fi
    rootfs=$(mktemp -d /tmp/sandlot-bench-rootfs.XXXXXX)
    say "building $IMAGE with debootstrap ($SUITE, minbase + python3; about a minute)"
    if ! as_root debootstrap --variant=minbase --include=python3 "$SUITE" "$rootfs" "$url" \
        >/tmp/sandlot-bench-debootstrap.log 2>&1; then
        say "debootstrap failed; see /tmp/sandlot-bench-debootstrap.log"
        as_root rm -rf "$rootfs"
        return 1
    fi
    as_root rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | "$docker" import - "$IMAGE" >/dev/null
    local rc=$?
    as_root rm -rf "$rootfs"
    return $rc
}

apt_install bwrap bubblewrap || failed+=(bubblewrap)
if [ -z "${SKIP_DOCKER:-}" ]; then
    apt_install dockerd docker.io || failed+=(docker.io)
    apt_install debootstrap debootstrap || failed+=(debootstrap)
    if start_dockerd; then
        build_image || failed+=("image $IMAGE")
    else
        failed+=(dockerd)
    fi
fi

if [ -z "${SKIP_PEERS:-}" ]; then
    say "installing the Python peers with pip"
    for pkg in "swe-rex aiohttp" llm-sandbox "jupyter_client ipykernel"; do
        # shellcheck disable=SC2086
        "$PYTHON" -m pip install -q $pkg >/dev/null 2>&1 || failed+=("pip: $pkg")
    done
fi

if [ ${#failed[@]} -gt 0 ]; then
    say "not available (the benchmark will skip what needs them): ${failed[*]}"
else
    say "all set"
fi
exit 0
