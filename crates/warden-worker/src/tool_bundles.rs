//! Tool-spec bundles a job can be handed by hash (`tool_bundle` on submit): the directory of
//! bundles a server knows (`tool_bundles:`), and a remote worker's copy of those it was sent.
//!
//! A bundle is known by the SHA-256 of its bytes, and only a file whose bytes still hash to
//! the name it is asked for counts: an edited bundle is not the bundle a caller chose.

use std::io::Read;
use std::path::{Path, PathBuf};

/// The largest bundle read: a bundle of hundreds of job types is a few hundred KiB.
pub const MAX_BYTES: u64 = 4 << 20;

/// The lowercase hex SHA-256 of `bytes`: a bundle's name.
pub fn digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `sha256:HEX` or `HEX` (64 hex digits, either case) as the lowercase digest.
pub fn parse_digest(s: &str) -> Result<String, String> {
    let hex = s.strip_prefix("sha256:").unwrap_or(s);
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex.to_ascii_lowercase())
    } else {
        Err(format!(
            "tool_bundle {:?} is not a bundle's SHA-256 (`sha256:` and 64 hex digits)",
            s.chars().take(80).collect::<String>()
        ))
    }
}

/// A directory of bundles, each named `…-<sha256>.json` (as `warden tools bundle` writes them)
/// or `<sha256>.json`.
#[derive(Debug, Clone)]
pub struct ToolBundles {
    dir: PathBuf,
}

impl ToolBundles {
    pub fn new(dir: impl Into<PathBuf>) -> ToolBundles {
        ToolBundles { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The bundle `digest` names and its bytes, if a file here holds exactly those bytes.
    pub fn find(&self, digest: &str) -> std::io::Result<Option<(PathBuf, Vec<u8>)>> {
        let suffix = format!("{digest}.json");
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let named = name == suffix
                || name
                    .strip_suffix(&suffix)
                    .is_some_and(|stem| stem.ends_with('-'));
            if !named {
                continue;
            }
            let path = entry.path();
            match read_capped(&path) {
                Ok(bytes) if self::digest(&bytes) == digest => return Ok(Some((path, bytes))),
                Ok(_) => {
                    tracing::warn!(path = %path.display(), "tool bundle's bytes do not match its name; ignored");
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "tool bundle unreadable; ignored");
                }
            }
        }
        Ok(None)
    }

    /// [`find`](Self::find) off the async runtime.
    pub async fn find_async(self, digest: String) -> std::io::Result<Option<(PathBuf, Vec<u8>)>> {
        tokio::task::spawn_blocking(move || self.find(&digest))
            .await
            .map_err(std::io::Error::other)?
    }

    /// Keeps `bytes` here as `<sha256>.json` (read-only, written whole), and returns the path.
    pub fn store(&self, bytes: &[u8]) -> std::io::Result<PathBuf> {
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;
        let digest = self::digest(bytes);
        let path = self.dir.join(format!("{digest}.json"));
        if read_capped(&path).is_ok_and(|b| b == bytes) {
            return Ok(path);
        }
        std::fs::create_dir_all(&self.dir)?;
        let tmp = self
            .dir
            .join(format!(".{digest}.{}.tmp", uuid::Uuid::now_v7().simple()));
        let written = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            f.set_permissions(std::fs::Permissions::from_mode(0o444))?;
            std::fs::rename(&tmp, &path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written.map(|()| path)
    }
}

/// A bundle file's bytes: a regular file of at most [`MAX_BYTES`].
pub fn read_capped(path: &Path) -> std::io::Result<Vec<u8>> {
    let f = std::fs::File::open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut bytes = Vec::new();
    f.take(MAX_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {} MiB",
            MAX_BYTES >> 20
        )));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_parse_in_both_spellings_and_garbage_is_refused() {
        let hex = "AB".repeat(32);
        assert_eq!(parse_digest(&format!("sha256:{hex}")), Ok("ab".repeat(32)));
        assert_eq!(parse_digest(&hex), Ok("ab".repeat(32)));
        for bad in [
            "",
            "sha256:",
            "sha256:abc",
            &"g".repeat(64),
            "sha512:00",
            "../x.json",
        ] {
            assert!(parse_digest(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_a_file_whose_bytes_match_its_name_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let bundles = ToolBundles::new(dir.path());
        let good = br#"{"tools":[]}"#;
        let d = digest(good);
        std::fs::write(dir.path().join(format!("warden-tools-1-{d}.json")), good).unwrap();
        let (path, bytes) = bundles.find(&d).unwrap().unwrap();
        assert_eq!(bytes, good);
        assert!(path.ends_with(format!("warden-tools-1-{d}.json")));

        // Edited after it was named: not the bundle anybody chose.
        let other = digest(b"other");
        std::fs::write(dir.path().join(format!("{other}.json")), b"edited").unwrap();
        assert_eq!(bundles.find(&other).unwrap(), None);
        // A name that merely ends with the digest's tail is not it.
        std::fs::write(dir.path().join(format!("x{d}.json")), good).unwrap();
        std::fs::remove_file(dir.path().join(format!("warden-tools-1-{d}.json"))).unwrap();
        assert_eq!(bundles.find(&d).unwrap(), None);
        // A directory that does not exist knows no bundle.
        assert_eq!(
            ToolBundles::new(dir.path().join("none")).find(&d).unwrap(),
            None
        );
    }

    #[test]
    fn a_stored_bundle_is_found_by_its_digest_and_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let bundles = ToolBundles::new(dir.path().join("cache"));
        let path = bundles.store(b"{}").unwrap();
        assert_eq!(bundles.store(b"{}").unwrap(), path);
        let (found, bytes) = bundles.find(&digest(b"{}")).unwrap().unwrap();
        assert_eq!((found, bytes), (path, b"{}".to_vec()));
        assert_eq!(std::fs::read_dir(bundles.dir()).unwrap().count(), 1);
    }
}
