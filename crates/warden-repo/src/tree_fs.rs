//! The files of a cached tree: its sealed (read-only) checkout, its git directory, removal.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub(crate) fn write_gitdir(dir: &Path, sha: &str, hooks_path: Option<&str>) -> std::io::Result<()> {
    std::fs::create_dir_all(dir.join("refs"))?;
    std::fs::create_dir_all(dir.join("objects"))?;
    std::fs::write(dir.join("HEAD"), format!("{sha}\n"))?;
    let mut config = String::from("[core]\n");
    if sha.len() == 64 {
        config.push_str("\trepositoryformatversion = 1\n");
    } else {
        config.push_str("\trepositoryformatversion = 0\n");
    }
    config.push_str("\tfilemode = true\n\tbare = false\n\tlogallrefupdates = false\n");
    if let Some(h) = hooks_path {
        // Quoted for git's config syntax: the value is a relative path from the job type.
        let quoted = h.replace('\\', "\\\\").replace('"', "\\\"");
        config.push_str(&format!("\thooksPath = \"{quoted}\"\n"));
    }
    if sha.len() == 64 {
        config.push_str("[extensions]\n\tobjectformat = sha256\n");
    }
    std::fs::write(dir.join("config"), config)
}

/// Removes a directory tree that may be read-only (directories `0555`).
pub(crate) fn remove_tree(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            make_writable(path);
            std::fs::remove_dir_all(path)
        }
        Err(e) => Err(e),
    }
}

pub(crate) fn make_writable(path: &Path) {
    let mut stack = vec![path.to_path_buf()];
    while let Some(d) = stack.pop() {
        let _ = std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755));
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
    }
}

pub(crate) fn remove_in_background(dir: PathBuf) {
    std::thread::spawn(move || {
        if let Err(e) = remove_tree(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "could not remove a checkout");
        }
    });
}

/// Walks a fresh tree: makes it read-only and measures it. Never follows links.
pub(crate) fn seal(tree: &Path, files_already_read_only: bool) -> std::io::Result<(u64, u64)> {
    let (mut bytes, mut files) = (0u64, 0u64);
    let mut dirs = vec![tree.to_path_buf()];
    let mut seen_dirs = Vec::new();
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let meta = e.metadata()?;
            if meta.is_dir() {
                dirs.push(e.path());
            } else {
                files += 1;
                bytes += meta.len();
                if meta.is_file() && !files_already_read_only {
                    let mode = meta.permissions().mode() & !0o222;
                    std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(mode))?;
                }
            }
        }
        seen_dirs.push(d);
    }
    // Directories last (children first), so the walk itself never needs to write into one.
    for d in seen_dirs.iter().rev() {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o555))?;
    }
    Ok((bytes, files))
}
