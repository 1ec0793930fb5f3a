#!/usr/bin/env bash
# Set up sandlot on a fresh Debian/Ubuntu machine: system packages, then the Python package.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
# What `pip install sandlot` needs on any host (the README's Install section): bubblewrap, and
# libseccomp for bwrap sandboxes' seccomp filter.
command -v bwrap >/dev/null 2>&1 || need+=(bubblewrap)
ldconfig -p 2>/dev/null | grep -q 'libseccomp\.so\.2' || need+=(libseccomp2)

# The rest is the developer set-up: what the tests use.
# The sandbox's Python is the host's /usr/bin/python3: code contexts use its pip, and the tests
# plot with its matplotlib and render tables with its pandas.
/usr/bin/python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
/usr/bin/python3 -c 'import matplotlib, pandas' >/dev/null 2>&1 || need+=(python3-matplotlib python3-pandas)
# The server's tests run against a throwaway PostgreSQL cluster as well as SQLite.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
# Docker provider tests: Debian's engine, and debootstrap to build the test image locally.
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
# SSH provider and `sandlot remote up` tests: a real OpenSSH server on loopback.
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
# Template bases: skopeo pulls and umoci unpacks oci: images with no engine; a real registry on
# loopback (Debian's docker-registry) holds the images the tests build.
command -v skopeo >/dev/null 2>&1 || need+=(skopeo)
command -v umoci >/dev/null 2>&1 || need+=(umoci)
command -v docker-registry >/dev/null 2>&1 || [ -x /usr/bin/docker-registry ] || need+=(docker-registry)
# Egress proxy tests and benchmarks: a real HTTP client speaking HTTP, CONNECT and SOCKS5.
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi

# Editable, with every extra and the test tools. (tests/install builds its own wheel and
# virtual environment with this pip: `python -m venv --without-pip` needs no python3-venv.)
python -m pip install -q -e '.[dev]'
# The OpenAI Agents SDK's E2B extension pins an older e2b pair (e2b 2.31, e2b-code-interpreter
# 2.8) that cannot share an environment with the current one: a virtual environment of its own
# for tests/e2b (same path there), rebuilt only when the pins change.
old_e2b="${SANDLOT_E2B_OLD_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/sandlot/e2b-old-venv}"
old_pins=("openai-agents[e2b]==0.24.0" "e2b==2.31.0" "e2b-code-interpreter==2.8.1")
if [ "$(cat "$old_e2b/sandlot-pins" 2>/dev/null)" != "${old_pins[*]}" ]; then
  rm -rf "$old_e2b"
  python -m venv --without-pip "$old_e2b"  # this pip installs into it: no python3-venv needed
  python -m pip --python "$old_e2b/bin/python" install -q "${old_pins[@]}"
  echo "${old_pins[*]}" >"$old_e2b/sandlot-pins"
fi
# The Docker engine and the test images (built once with debootstrap, then reused).
python tests/docker_env.py
