#!/usr/bin/env bash
# Usage: scripts/host-tool.sh COMMAND DEBIAN-PACKAGE
#
# Prints the path of COMMAND, installing DEBIAN-PACKAGE with apt first when the
# command is missing and this runs as root with apt-get (here and in CI). Exits
# 1 with the reason on stderr when the command cannot be had. Tests that need a
# host tool (promtool, from Debian's "prometheus") call this once per run.
set -u
cmd=$1 pkg=$2
if path=$(command -v "$cmd"); then echo "$path"; exit 0; fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "$cmd is not installed and this is not root with apt-get (install Debian's $pkg)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -q --no-install-recommends "$pkg" >/dev/null 2>&1; then
    apt-get update -q >/dev/null 2>&1 || true
    if ! out=$(apt-get install -y -q --no-install-recommends "$pkg" 2>&1); then
        echo "apt-get install $pkg failed: $(echo "$out" | tail -n 2)" >&2
        exit 1
    fi
fi
command -v "$cmd" || { echo "$pkg installed but $cmd is not on PATH" >&2; exit 1; }
