#!/bin/sh
# Create the project's virtualenv with pinned packages, installing the Debian
# packages the build needs first (we are root on CI and developer machines).
set -eu
venv="${1:-.venv}"

need_apt=""
python3 -c 'import ensurepip, venv' 2>/dev/null || need_apt="$need_apt python3-venv"
command -v gcc >/dev/null 2>&1 || need_apt="$need_apt gcc"
command -v as >/dev/null 2>&1 || need_apt="$need_apt binutils"
command -v musl-gcc >/dev/null 2>&1 || need_apt="$need_apt musl-tools"  # SQLite guest libc
if [ -n "$need_apt" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "bootstrap: please install:$need_apt (apt-get install -y$need_apt)" >&2
        exit 1
    fi
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $need_apt
fi

rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q -e ".[dev]"
