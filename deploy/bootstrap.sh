#!/usr/bin/env bash
# Set up recsvc on a fresh Debian machine with Python 3.11: system packages that are missing,
# a virtual environment in .venv, and recsvc installed into it (editable).
#
#   bash deploy/bootstrap.sh          # to run the service
#   bash deploy/bootstrap.sh --dev    # also test tools, redis-server and Java 17 (the Spark
#                                     # engine's tests), to run the test suite
#
# Safe to run again: it installs only what is missing or changed.
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
[[ "${1:-}" == "--dev" ]] && dev=1

say() { printf 'bootstrap: %s\n' "$*" >&2; }

python=""
for candidate in "${PYTHON:-}" python3.11 python3; do
  if [[ -n "$candidate" ]] && command -v "$candidate" >/dev/null 2>&1 &&
     "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    python=$(command -v "$candidate"); break
  fi
done
[[ -n "$python" ]] || { say "Python 3.11 or newer is required (set PYTHON=...)"; exit 1; }

# System packages: venv support, a C++ compiler and Python headers (hnswlib builds from
# source), and redis-server and a Java 17 runtime (pyspark's JVM) for the tests.
missing=()
"$python" -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
command -v g++ >/dev/null 2>&1 || missing+=(g++)
"$python" -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
  || missing+=(python3-dev)
if (( dev )); then command -v redis-server >/dev/null 2>&1 || missing+=(redis-server); fi
if (( dev )); then command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless); fi
if (( ${#missing[@]} )); then
  sudo=""
  (( EUID == 0 )) || sudo="sudo"
  say "installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

[[ -x .venv/bin/python ]] || { say "creating .venv"; "$python" -m venv .venv; }

# Reinstall only when pyproject.toml (the pins) or the mode changed.
extras=""
(( dev )) && extras="[dev]"
stamp=".venv/.recsvc-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1) ${extras}"
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  say "installing recsvc${extras} and its pinned dependencies into .venv (torch is large)"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extras}" 2>&1 |
    grep -v "^WARNING: Location" >&2 || true
  .venv/bin/python -c 'import recsvc, hnswlib, implicit, grpc' ||
    { say "installation failed"; exit 1; }
  echo "$want" > "$stamp"
fi
say "ready: .venv/bin/recsvc"
