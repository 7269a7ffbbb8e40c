//! The systemd boot of `cargo xtask vm-test`: the same VM, with systemd as init, proves the
//! deployment of docs/deploy.md — `deploy/install.sh` installs warden as a rootless service
//! with a delegated cgroup v2 subtree, a job runs, the VM reboots (the same QEMU process: the
//! root disk's snapshot survives a guest reboot), warden comes back by itself with the first
//! job's record, a second job runs, the installer is run again (idempotent) and
//! `deploy/uninstall.sh` removes the service.
//!
//! The initramfs runs `target/vm-systemd.sh` as PID 1, which installs the check unit and
//! `exec`s systemd; the check unit runs `target/vm-systemd-check.sh` on the console.

/// PID 1 after `switch_root`: puts the check unit in place and becomes systemd.
pub(super) fn init_script(root: &str) -> String {
    format!(
        r#"#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
cat > /etc/systemd/system/warden-vm-check.service <<'UNIT'
[Unit]
Description=warden vm-test: the deployment checks
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/bin/sh {root}/target/vm-systemd-check.sh
StandardOutput=tty
StandardError=tty
TTYPath=/dev/console
TTYReset=no
TTYVHangup=no
[Install]
WantedBy=multi-user.target
UNIT
mkdir -p /etc/systemd/system/multi-user.target.wants
ln -sf /etc/systemd/system/warden-vm-check.service \
    /etc/systemd/system/multi-user.target.wants/warden-vm-check.service
# No login prompt on the console the checks write to.
ln -sf /dev/null /etc/systemd/system/serial-getty@ttyS0.service
exec /lib/systemd/systemd
"#
    )
}

/// The checks, as a systemd unit: the first boot installs and reboots, the second checks
/// what survived and powers off.
pub(super) fn check_script(root: &str) -> String {
    format!(
        r#"#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
cd {root}
step() {{
    name=$1; shift
    echo "=== vm-step systemd-$name"
    "$@" 2>&1
    echo "=== vm-step systemd-$name exit $?"
}}
client="--server http://127.0.0.1:8080 --token-file /etc/warden/admin.token"
# A job of the installed server: it ran in the sandbox, rootless, with its memory limit
# enforced through the delegated cgroup, and said hello.
run_job() {{
    out=$(warden job submit hello $client --wait -o json) || {{ echo "submit: $out"; return 1; }}
    id=$(echo "$out" | sed -n 's/.*"job_id": *"\([^"]*\)".*/\1/p' | head -n1)
    job=$(warden job get "$id" $client -o json)
    echo "$job"
    echo "$job" | grep -q '"status": *"succeeded"' || return 1
    echo "$job" | grep -q '"unsafe_fallback": *false' || return 1
    echo "$job" | grep -q '"identity": *"rootless' || return 1
    echo "$job" | grep -q '"memory": *"cgroup v2' || return 1
    warden job logs "$id" $client | grep -q 'hello from warden' || return 1
}}
installed() {{
    systemctl is-enabled warden.service && systemctl is-active warden.service &&
    [ "$(stat -c '%U %a' /var/lib/warden)" = "warden 700" ] &&
    [ "$(stat -c '%U:%G %a' /etc/warden/admin.token)" = "root:root 600" ] &&
    [ "$(stat -c '%U:%G %a' /etc/warden/worker.token)" = "root:warden 640" ] &&
    [ "$(stat -c '%U:%G %a' /etc/warden/warden.yaml)" = "root:warden 640" ] &&
    [ "$(ps -o user= -p "$(systemctl show -p MainPID --value warden.service)")" = warden ]
}}
if [ ! -e /var/lib/warden-vm-rebooted ]; then
    echo "vm: systemd $(systemctl --version | head -n1), first boot"
    step install deploy/install.sh --binary target/debug/warden
    step installed installed
    step job-before-reboot run_job
    sum=$(md5sum /etc/warden/admin.token /etc/warden/worker.token /etc/warden/warden.yaml)
    step install-again deploy/install.sh --binary target/debug/warden
    step nothing-overwritten sh -c "[ \"\$(md5sum /etc/warden/admin.token /etc/warden/worker.token /etc/warden/warden.yaml)\" = \"$sum\" ]"
    touch /var/lib/warden-vm-rebooted
    sync
    systemctl reboot
    exit 0
fi
echo "vm: second boot"
step installed-after-reboot installed
# The unit is Type=exec: active once started, listening a moment later (health says when).
step ready-after-reboot sh -c 'for _ in $(seq 1 120); do warden health --url http://127.0.0.1:8080 >/dev/null 2>&1 && exit 0; sleep 0.5; done; exit 1'
step first-job-kept sh -c "warden job list $client | grep -c succeeded | grep -qx 1"
step job-after-reboot run_job
step uninstall deploy/uninstall.sh
step uninstalled sh -c "! systemctl is-active -q warden.service && [ ! -e /usr/local/bin/warden ] && [ -e /var/lib/warden/warden.db ]"
echo "=== vm-test-finished"
sync
systemctl poweroff
"#
    )
}
