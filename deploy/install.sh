#!/bin/sh
# Installs warden as systemd services on this host, rootless (the `warden` system user).
# Idempotent: run it again to upgrade the binary or the units; it never overwrites a
# configuration, a token or a secret that exists. See docs/deploy.md.
#
#   deploy/install.sh [--binary PATH] [--no-start]
#       the control plane with its embedded worker (warden.service)
#   deploy/install.sh --worker URL --worker-token FILE [--binary PATH] [--no-start]
#       a remote worker for the control plane at URL (warden-worker.service)
set -eu

here=$(cd "$(dirname "$0")" && pwd)
binary="$here/../target/release/warden"
worker_url=""
worker_token=""
start=yes

die() { echo "install.sh: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary=${2:?--binary needs a path}; shift 2 ;;
        --worker) worker_url=${2:?--worker needs the control plane URL}; shift 2 ;;
        --worker-token) worker_token=${2:?--worker-token needs a file}; shift 2 ;;
        --no-start) start=no; shift ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done

[ "$(id -u)" = 0 ] || die "run as root (it creates a system user and installs units)"
command -v systemctl >/dev/null || die "systemctl not found: this installs systemd services"
[ -x "$binary" ] || die "$binary is not an executable (build it: cargo build --release)"
if [ -n "$worker_url" ]; then
    [ -n "$worker_token" ] || die "--worker needs --worker-token FILE (the control plane's worker token)"
    [ -s "$worker_token" ] || die "$worker_token is empty or missing"
fi

# The user warden and every job run as (rootless: jobs are that user outside their namespaces).
if ! getent passwd warden >/dev/null; then
    useradd --system --user-group --home-dir /var/lib/warden --no-create-home \
        --shell /usr/sbin/nologin warden
    echo "install.sh: created the system user warden"
fi

install -d -m 0750 -o root -g warden /etc/warden /etc/warden/secrets

# The binary: replaced by rename, so a running service keeps its old executable until restart.
changed=no
if ! cmp -s "$binary" /usr/local/bin/warden; then
    install -m 0755 "$binary" /usr/local/bin/.warden.new
    mv -f /usr/local/bin/.warden.new /usr/local/bin/warden
    changed=yes
fi
[ -f "$here/../docs/deploy.md" ] &&
    install -D -m 0644 "$here/../docs/deploy.md" /usr/local/share/doc/warden/deploy.md

# A file made once, with its mode and owner, never overwritten.
make_once() { # path mode group content
    [ -e "$1" ] && return 0
    tmp=$(mktemp "$1.XXXXXX")
    printf '%s\n' "$4" >"$tmp"
    chmod "$2" "$tmp"
    chown "root:$3" "$tmp"
    mv "$tmp" "$1"
    echo "install.sh: wrote $1"
}

install_unit() { # name
    if ! cmp -s "$here/systemd/$1" "/etc/systemd/system/$1"; then
        install -m 0644 "$here/systemd/$1" "/etc/systemd/system/$1"
        changed=yes
    fi
}

start_unit() { # name
    systemctl daemon-reload
    systemctl enable "$1" >/dev/null 2>&1
    [ "$start" = yes ] || return 0
    if [ "$changed" = yes ]; then systemctl restart "$1"; else systemctl start "$1"; fi
}

if [ -n "$worker_url" ]; then
    make_once /etc/warden/worker.yaml 0640 warden "$(cat "$here/systemd/worker.yaml")"
    make_once /etc/warden/worker.env 0640 warden "WARDEN_SERVER=$worker_url"
    if [ ! -e /etc/warden/worker.token ]; then
        install -m 0640 -o root -g warden "$worker_token" /etc/warden/worker.token
    fi
    install_unit warden-worker.service
    start_unit warden-worker.service
    echo "install.sh: warden-worker.service installed (control plane $worker_url)"
    exit 0
fi

# The token remote workers present: random, readable by warden only.
if [ ! -e /etc/warden/worker.token ]; then
    make_once /etc/warden/worker.token 0640 warden \
        "$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
fi
make_once /etc/warden/warden.yaml 0640 warden "$(cat "$here/systemd/warden.yaml")"

install_unit warden.service
start_unit warden.service
[ "$start" = yes ] || { echo "install.sh: installed (not started)"; exit 0; }

# The first admin token, made once the server has made its database.
not_started() {
    echo "install.sh: warden.service did not start; its last words:" >&2
    journalctl -u warden.service -n 15 --no-pager -o cat >&2 || true
    exit 1
}
i=0
until [ -s /var/lib/warden/warden.db ]; do
    i=$((i + 1))
    [ $i -le 300 ] || not_started
    [ "$(systemctl show -p NRestarts --value warden.service)" -lt 2 ] || not_started
    systemctl is-failed -q warden.service && not_started
    sleep 0.2
done
if [ ! -e /etc/warden/admin.token ]; then
    new=/var/lib/warden/.admin.token.new
    rm -f "$new"
    runuser -u warden -- /usr/local/bin/warden token create \
        --serve-config /etc/warden/warden.yaml --tenant default \
        --scopes read,submit,cancel,admin --name install.sh --out "$new" >/dev/null
    chown root:root "$new"
    chmod 0600 "$new"
    mv "$new" /etc/warden/admin.token
    echo "install.sh: wrote /etc/warden/admin.token (admin of tenant default; keep it private)"
fi
echo "install.sh: warden.service is $(systemctl is-active warden.service) on http://127.0.0.1:8080"
echo "  try: warden job submit hello --server http://127.0.0.1:8080 --token-file /etc/warden/admin.token --wait"
