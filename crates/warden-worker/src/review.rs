//! Review bundles (`kind: review_bundle`): the diff of a repository between `SINCE_SHA` and the
//! job's commit, bounded. The bundle is made by this module's [`main`], which the worker runs
//! inside the job's sandbox as `warden __review-bundle` (its own executable bound read-only at
//! [`EXE_IN_SANDBOX`]) against the read-only worktree; the worker then checks what it claims
//! ([`check_fallback`]) before `artifact.json` says it. See docs/pipelines.md.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

/// The argument that makes the `warden` binary the bundle maker.
pub const ARG: &str = "__review-bundle";
/// Where a review job's sandbox has warden's executable.
pub const EXE_IN_SANDBOX: &str = "/opt/warden/warden";
/// What the bundle maker writes, in the job's artifacts.
pub const BUNDLE: &str = "REVIEW_BUNDLE.txt";
pub const META: &str = "size_cap_meta.json";
pub const ARCHIVE: &str = "REVIEW_PACKETS.tar.gz";
pub const PACKETS_DIR: &str = "review_packets";
/// Room kept in each packet for its header.
const HEADER_ROOM: usize = 512;

/// What the fallback produced (`size_cap_meta.json`), as `artifact.json` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fallback {
    pub size_cap_kb: u64,
    /// The whole bundle's size, over the cap (or any size when forced).
    pub bundle_bytes: u64,
    pub forced: bool,
    pub files: u64,
    pub packets: u64,
    /// `review_packets/<stamp>`, relative to the artifacts.
    pub review_packets_dir: String,
    pub review_packets_archive: String,
}

/// Runs the bundle maker in the sandbox; its exit code.
pub fn main() -> i32 {
    match make() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("review bundle: {e}");
            1
        }
    }
}

fn env(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("{name} is not set"))
}

/// `git` on the job's worktree, with nothing of the repository's run (no external diff, no
/// text conversion, no pager); its standard output.
fn git(args: &[&str]) -> Result<Vec<u8>, String> {
    let out = Command::new("git")
        .args(["-c", "core.quotepath=off", "--no-pager"])
        .args(args)
        .output()
        .map_err(|e| format!("git: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out.stdout)
}

fn diff_args<'a>(since: &'a str, head: &'a str) -> [&'a str; 6] {
    [
        "diff",
        "--no-ext-diff",
        "--no-textconv",
        "--no-color",
        since,
        head,
    ]
}

fn make() -> Result<(), String> {
    let since = env("SINCE_SHA")?;
    let head = env("WARDEN_SHA")?;
    let cap_kb: u64 = env("SIZE_CAP_KB")?
        .parse()
        .map_err(|_| "SIZE_CAP_KB is not a number".to_string())?;
    let forced = std::env::var("FORCE_SIZE_CAP").as_deref() == Ok("1");
    let out = PathBuf::from(env("ARTIFACT_DIR")?);
    let cap = (cap_kb as usize).saturating_mul(1024);
    let range = format!("{since}..{head}");
    let mut bundle =
        format!("REVIEW BUNDLE {range}\n\n== commits (oldest first) ==\n").into_bytes();
    bundle.extend(git(&[
        "log",
        "--reverse",
        "--no-decorate",
        "--format=commit %H%nAuthor: %an <%ae>%nDate:   %aI%n%n%w(0,4,4)%B",
        &range,
    ])?);
    bundle.extend_from_slice(b"\n== diffstat ==\n");
    let [d, a, b, c, s, h] = diff_args(&since, &head);
    bundle.extend(git(&[d, a, b, c, "--stat=200", s, h])?);
    bundle.extend_from_slice(b"\n== patch ==\n");
    bundle.extend(git(&diff_args(&since, &head))?);
    write(&out.join(BUNDLE), &bundle)?;
    if bundle.len() <= cap && !forced {
        return Ok(());
    }
    fallback(
        &out,
        &since,
        &head,
        cap,
        cap_kb,
        bundle.len() as u64,
        forced,
    )
}

/// The per-file packets, each under the cap (a file larger than the cap split across packets,
/// in order), their archive, the instructions, the meta file, and the warning.
fn fallback(
    out: &Path,
    since: &str,
    head: &str,
    cap: usize,
    cap_kb: u64,
    bundle_bytes: u64,
    forced: bool,
) -> Result<(), String> {
    if cap <= HEADER_ROOM {
        return Err(format!(
            "SIZE_CAP_KB {cap_kb} leaves no room for a packet's content"
        ));
    }
    let room = cap - HEADER_ROOM;
    let [d, a, b, c, s, h] = diff_args(since, head);
    let names = git(&[d, a, b, c, "--name-only", "-z", s, h])?;
    let files: Vec<String> = names
        .split(|x| *x == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect();
    // (files in the packet, its content)
    let mut packets: Vec<(Vec<String>, Vec<u8>)> = Vec::new();
    let mut current: (Vec<String>, Vec<u8>) = (Vec::new(), Vec::new());
    for file in &files {
        let patch = git(&[d, a, b, c, s, h, "--", file])?;
        if patch.len() > room {
            if !current.1.is_empty() {
                packets.push(std::mem::take(&mut current));
            }
            let parts = split(&patch, room);
            let n = parts.len();
            for (i, part) in parts.into_iter().enumerate() {
                packets.push((vec![format!("{file} (part {} of {n})", i + 1)], part));
            }
            continue;
        }
        if current.1.len() + patch.len() > room {
            packets.push(std::mem::take(&mut current));
        }
        current.0.push(file.clone());
        current.1.extend(patch);
    }
    if !current.1.is_empty() || packets.is_empty() {
        packets.push(current);
    }
    let stamp = format!(
        "{}-{}",
        &since[..12.min(since.len())],
        &head[..12.min(head.len())]
    );
    let rel_dir = format!("{PACKETS_DIR}/{stamp}");
    let dir = out.join(&rel_dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{rel_dir}: {e}"))?;
    let total = packets.len();
    for (i, (names, content)) in packets.iter().enumerate() {
        let mut text = format!(
            "REVIEW PACKET {} of {total} ({since}..{head})\nfiles: {}\n\n",
            i + 1,
            names.join(", ")
        )
        .into_bytes();
        if text.len() > HEADER_ROOM {
            text = format!(
                "REVIEW PACKET {} of {total} ({since}..{head})\nfiles: {} files\n\n",
                i + 1,
                names.len()
            )
            .into_bytes();
        }
        text.extend_from_slice(content);
        if text.len() > cap {
            return Err(format!("packet {} would be over the cap", i + 1));
        }
        write(&dir.join(format!("packet_{:03}.txt", i + 1)), &text)?;
    }
    write(
        &out.join("HOW_TO_PASTE.txt"),
        format!(
            "The diff {since}..{head} is {bundle_bytes} bytes, over the {cap_kb} KiB cap{}.\n\
             Paste the packets in {rel_dir}/ one at a time, in order (packet_001.txt first),\n\
             each as its own message; each is under {cap_kb} KiB. A file too large for one\n\
             packet is split across consecutive packets, marked part i of n.\n",
            if forced { " (forced)" } else { "" }
        )
        .as_bytes(),
    )?;
    write(
        &out.join("README_REVIEW_PACKETS.txt"),
        format!(
            "{rel_dir}/: {total} packets covering {} changed files of {since}..{head}.\n\
             {ARCHIVE}: the same packets in one archive.\n{BUNDLE}: the whole bundle \
             (commits, diffstat, patch), over the cap.\n{META}: these numbers as JSON.\n",
            files.len()
        )
        .as_bytes(),
    )?;
    let tar = Command::new("tar")
        .arg("-czf")
        .arg(out.join(ARCHIVE))
        .arg("-C")
        .arg(out.join(PACKETS_DIR))
        .arg(&stamp)
        .status()
        .map_err(|e| format!("tar: {e}"))?;
    if !tar.success() {
        return Err(format!("tar exited {tar}"));
    }
    let meta = Fallback {
        size_cap_kb: cap_kb,
        bundle_bytes,
        forced,
        files: files.len() as u64,
        packets: total as u64,
        review_packets_dir: rel_dir,
        review_packets_archive: ARCHIVE.into(),
    };
    write(
        &out.join(META),
        &serde_json::to_vec_pretty(&meta).map_err(|e| e.to_string())?,
    )?;
    write(
        &out.join("warden-outputs.json"),
        br#"{"warnings": ["SIZE_CAP_EXCEEDED"]}"#,
    )
}

/// Cuts `data` into pieces of at most `room` bytes, at a line's end where one is in reach.
fn split(data: &[u8], room: usize) -> Vec<Vec<u8>> {
    let mut parts = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let mut take = rest.len().min(room);
        if take < rest.len()
            && let Some(nl) = rest[..take].iter().rposition(|b| *b == b'\n')
        {
            take = nl + 1;
        }
        parts.push(rest[..take].to_vec());
        rest = &rest[take..];
    }
    parts
}

fn write(path: &Path, data: &[u8]) -> Result<(), String> {
    std::fs::File::create(path)
        .and_then(|mut f| f.write_all(data))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// What the worker reads back after a review job: `Ok(None)` when the bundle fitted, the
/// fallback when the job says it took it — checked: the archive a regular file, the packet
/// directory holding as many packets as claimed — or why it cannot be believed (fail closed).
pub fn check_fallback(artifacts: &Path) -> Result<Option<Fallback>, String> {
    use std::io::Read;
    let (file, size) = match crate::artifact_dir::open_beneath(artifacts, Path::new(META)) {
        Ok(f) => f,
        Err(crate::artifact_dir::ArtifactError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    if size > 64 << 10 {
        return Err(format!("{META} is {size} bytes"));
    }
    let mut text = Vec::new();
    file.take(64 << 10)
        .read_to_end(&mut text)
        .map_err(|e| e.to_string())?;
    let meta: Fallback = serde_json::from_slice(&text).map_err(|e| format!("{META}: {e}"))?;
    let listing = crate::artifact_dir::list(artifacts);
    let kind = |p: &str| {
        listing
            .entries
            .iter()
            .find(|e| e.path == Path::new(p))
            .map(|e| e.kind)
    };
    if kind(&meta.review_packets_archive) != Some(crate::artifact_dir::EntryKind::File) {
        return Err(format!("{} is missing", meta.review_packets_archive));
    }
    let prefix = format!("{}/packet_", meta.review_packets_dir);
    let packets = listing
        .entries
        .iter()
        .filter(|e| {
            e.kind == crate::artifact_dir::EntryKind::File
                && e.path.to_string_lossy().starts_with(&prefix)
                && e.size <= meta.size_cap_kb.saturating_mul(1024)
        })
        .count() as u64;
    if packets != meta.packets || packets == 0 {
        return Err(format!(
            "{} holds {packets} packets under the cap, not the {} claimed",
            meta.review_packets_dir, meta.packets
        ));
    }
    Ok(Some(meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fallback_is_believed_only_when_its_files_are_there() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert_eq!(check_fallback(d), Ok(None), "no meta: the bundle fitted");
        let meta = Fallback {
            size_cap_kb: 1,
            bundle_bytes: 5000,
            forced: false,
            files: 3,
            packets: 2,
            review_packets_dir: "review_packets/s".into(),
            review_packets_archive: ARCHIVE.into(),
        };
        std::fs::write(d.join(META), serde_json::to_vec(&meta).unwrap()).unwrap();
        std::fs::create_dir_all(d.join("review_packets/s")).unwrap();
        std::fs::write(d.join("review_packets/s/packet_001.txt"), "x").unwrap();
        assert_eq!(
            check_fallback(d).unwrap_err(),
            "REVIEW_PACKETS.tar.gz is missing"
        );
        std::fs::write(d.join(ARCHIVE), "gz").unwrap();
        assert_eq!(
            check_fallback(d).unwrap_err(),
            "review_packets/s holds 1 packets under the cap, not the 2 claimed"
        );
        // A packet over the cap does not count.
        std::fs::write(d.join("review_packets/s/packet_002.txt"), "y".repeat(2000)).unwrap();
        assert!(check_fallback(d).is_err());
        std::fs::write(d.join("review_packets/s/packet_002.txt"), "y").unwrap();
        assert_eq!(check_fallback(d), Ok(Some(meta)));
        std::fs::write(d.join(META), r#"{"size_cap_exceeded": true}"#).unwrap();
        assert!(
            check_fallback(d)
                .unwrap_err()
                .starts_with("size_cap_meta.json: ")
        );
    }

    #[test]
    fn a_long_patch_is_cut_at_line_ends_within_the_room() {
        let data = b"aaaa\nbbbb\ncccccccccccc\nd\n";
        let parts = split(data, 8);
        assert!(parts.iter().all(|p| p.len() <= 8), "{parts:?}");
        assert_eq!(parts.concat(), data);
        assert_eq!(parts[0], b"aaaa\n");
    }
}
