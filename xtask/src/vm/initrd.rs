//! The VM's initramfs: a static busybox that loads the modules Debian's cloud kernel needs to
//! reach its disks, mounts the root filesystem and the payload, and hands over to the
//! payload's run script.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use super::{Kernel, run};

/// The modules (and their dependencies, dependencies first) that `names` need, as paths
/// relative to the modules directory; built-in ones need nothing. Dependencies are read from
/// each module's own `depends=` modinfo (no `depmod` needed on the host).
fn module_closure(modules: &Path, names: &[&str]) -> anyhow::Result<Vec<String>> {
    let order = std::fs::read_to_string(modules.join("modules.order"))?;
    let stem = |path: &str| {
        let file = path.rsplit('/').next().unwrap_or(path);
        file.split(".ko").next().unwrap_or(file).replace('-', "_")
    };
    let paths: std::collections::HashMap<String, String> =
        order.lines().map(|l| (stem(l), l.to_string())).collect();
    let builtin = std::fs::read_to_string(modules.join("modules.builtin")).unwrap_or_default();
    let builtin: std::collections::HashSet<String> = builtin.lines().map(stem).collect();
    let depends = |path: &str| -> anyhow::Result<Vec<String>> {
        let bytes = std::fs::read(modules.join(path))?;
        let key = b"depends=";
        let Some(at) = bytes.windows(key.len()).position(|w| w == key) else {
            return Ok(Vec::new());
        };
        let rest = &bytes[at + key.len()..];
        let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
        Ok(String::from_utf8_lossy(&rest[..end])
            .split(',')
            .filter(|d| !d.is_empty())
            .map(|d| d.replace('-', "_"))
            .collect())
    };
    fn visit(
        name: &str,
        paths: &std::collections::HashMap<String, String>,
        builtin: &std::collections::HashSet<String>,
        depends: &dyn Fn(&str) -> anyhow::Result<Vec<String>>,
        order: &mut Vec<String>,
    ) -> anyhow::Result<()> {
        let Some(path) = paths.get(name) else {
            if builtin.contains(name) {
                return Ok(());
            }
            bail!("module {name} is neither built in nor in modules.order");
        };
        if order.contains(path) {
            return Ok(());
        }
        for d in depends(path)? {
            visit(&d, paths, builtin, depends, order)?;
        }
        order.push(path.clone());
        Ok(())
    }
    let mut out = Vec::new();
    for n in names {
        visit(n, &paths, &builtin, &depends, &mut out)?;
    }
    Ok(out)
}

/// A busybox initramfs that loads the disk modules, mounts the root filesystem and the
/// payload, and hands over to the payload's run script.
pub(super) fn ensure_initrd(vm: &Path, kernel: &Kernel) -> anyhow::Result<PathBuf> {
    let out = vm.join("initrd.gz");
    let dir = vm.join("initrd");
    let _ = std::fs::remove_dir_all(&dir);
    for d in ["bin", "proc", "sys", "dev", "newroot", "modules"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    std::fs::copy("/bin/busybox", dir.join("bin/busybox"))
        .context("copy /bin/busybox (a static busybox: apt-get install busybox-static)")?;
    let mut load = String::new();
    for (i, m) in module_closure(&kernel.modules, super::BOOT_MODULES)?
        .iter()
        .enumerate()
    {
        let src = kernel.modules.join(m);
        let dst = dir.join(format!("modules/{i:02}.ko"));
        if m.ends_with(".xz") {
            let f = std::fs::File::create(&dst)?;
            run(Command::new("xz").arg("-dc").arg(&src).stdout(f))?;
        } else if m.ends_with(".zst") {
            let f = std::fs::File::create(&dst)?;
            run(Command::new("zstd").arg("-dc").arg(&src).stdout(f))?;
        } else {
            std::fs::copy(&src, &dst)?;
        }
        load.push_str(&format!("insmod /modules/{i:02}.ko\n"));
    }
    let init = format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
{load}for i in $(seq 1 100); do [ -b /dev/vdb ] && break; sleep 0.1; done
mount -t ext4 /dev/vda /newroot || {{ echo "vm-init: no root disk"; poweroff -f; }}
payload=$(cat /proc/cmdline | tr ' ' '\n' | sed -n 's/^warden.payload=//p')
# /tmp before the payload: the workspace may itself live under /tmp.
mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp
mkdir -p /newroot$payload
mount -t ext4 /dev/vdb /newroot$payload || {{ echo "vm-init: no payload disk"; poweroff -f; }}
script=$(cat /proc/cmdline | tr ' ' '\n' | sed -n 's/^warden.script=//p')
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /bin/sh $payload/${{script:-target/vm-run.sh}}
"#
    );
    std::fs::write(dir.join("init"), init)?;
    run(Command::new("chmod").arg("755").arg(dir.join("init")))?;
    let f = std::fs::File::create(&out)?;
    let script = "find . | cpio -o -H newc --quiet | gzip -1";
    run(Command::new("sh")
        .args(["-c", script])
        .current_dir(&dir)
        .stdout(f))?;
    Ok(out)
}
