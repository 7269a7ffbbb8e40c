#!/bin/sh
# Removes what deploy/install.sh installed: the units and the binary. Configuration, tokens,
# jobs, logs and artifacts stay unless --purge (then /etc/warden, /var/lib/warden,
# /var/lib/warden-worker and the warden user go too).
set -eu
purge=no
case "${1:-}" in
    --purge) purge=yes ;;
    "") ;;
    *) echo "uninstall.sh: unknown argument $1 (only --purge)" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { echo "uninstall.sh: run as root" >&2; exit 2; }
for unit in warden.service warden-worker.service; do
    if [ -e "/etc/systemd/system/$unit" ]; then
        systemctl disable --now "$unit" >/dev/null 2>&1 || true
        rm -f "/etc/systemd/system/$unit"
    fi
done
systemctl daemon-reload
rm -f /usr/local/bin/warden
rm -rf /usr/local/share/doc/warden
if [ "$purge" = yes ]; then
    rm -rf /etc/warden /var/lib/warden /var/lib/warden-worker
    getent passwd warden >/dev/null && userdel warden
    getent group warden >/dev/null && groupdel warden
    echo "uninstall.sh: removed warden, its configuration and its data"
else
    echo "uninstall.sh: removed the units and the binary; /etc/warden and /var/lib/warden kept (--purge removes them)"
fi
