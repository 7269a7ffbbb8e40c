#!/usr/bin/env bash
# Installs and starts what warden's build and tests need. Idempotent: safe to run again.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }

if ! have cargo; then
    echo "setup: cargo is missing; install Rust (https://rustup.rs) first" >&2
    exit 1
fi

# Tools the tests call: sh, setsid, mkfifo, sleep (coreutils/util-linux) and a C toolchain for the
# bundled SQLite.
missing=()
for tool in sh setsid mkfifo sleep cc; do
    have "$tool" || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    if have apt-get && [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq coreutils util-linux build-essential
    else
        echo "setup: missing tools: ${missing[*]} (install coreutils, util-linux and a C compiler)" >&2
        exit 1
    fi
fi

if ! cargo nextest --version >/dev/null 2>&1; then
    echo "setup: installing cargo-nextest"
    cargo install cargo-nextest --locked
fi
# Benchmarks compare against bubblewrap and util-linux's unshare: only with --bench.
if [ "${1:-}" = "--bench" ] && ! have bwrap; then
    if have apt-get && [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap
    else
        echo "setup: install bubblewrap for cargo xtask bench sandbox" >&2
        exit 1
    fi
fi
echo "setup: ok"
