//! Local sources: an OCI image layout directory (`oci:DIR[:TAG]`) and a tar of one
//! (`oci-archive:PATH[:TAG]`).

use std::io::Read;
use std::path::{Path, PathBuf};

use warden_core::image::Digest;

use crate::ImageError;
use crate::oci::{self, Manifest};

const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// An OCI image layout: a directory, or a tar of one.
pub(crate) enum Layout {
    Dir(PathBuf),
    Archive(PathBuf),
}

impl Layout {
    fn path(&self) -> &Path {
        match self {
            Layout::Dir(p) | Layout::Archive(p) => p,
        }
    }

    /// A blob of a layout directory, opened for reading.
    pub fn open(&self, digest: &Digest) -> Result<std::fs::File, ImageError> {
        let path = self.path().join("blobs/sha256").join(digest.hex());
        std::fs::File::open(&path).map_err(|e| {
            ImageError::Refused(format!(
                "the image layout has no blob {digest} ({}: {e})",
                path.display()
            ))
        })
    }

    /// A small file of the layout (`index.json`, a manifest), read whole.
    fn small_file(&self, name: &str) -> Result<Vec<u8>, ImageError> {
        match self {
            Layout::Dir(dir) => read_capped(&dir.join(name)),
            Layout::Archive(path) => archive_file(path, name),
        }
    }

    /// A small JSON blob, read whole and checked against its digest.
    pub fn json(&self, digest: &Digest, what: &str) -> Result<Vec<u8>, ImageError> {
        let bytes = self.small_file(&format!("blobs/sha256/{}", digest.hex()))?;
        oci::check(&bytes, digest, what)?;
        Ok(bytes)
    }

    /// The manifest digest `tag` names (or the layout's only image, without a tag).
    pub fn resolve(&self, tag: Option<&str>) -> Result<Digest, ImageError> {
        let bytes = self.small_file("index.json")?;
        let index = Manifest::parse(&bytes)?;
        let chosen = match tag {
            Some(t) => index
                .manifests
                .iter()
                .find(|m| m.annotations.get(REF_NAME).map(String::as_str) == Some(t))
                .ok_or_else(|| {
                    ImageError::Unavailable(format!(
                        "{} has no image tagged {t:?}",
                        self.path().display()
                    ))
                })?,
            None => match index.manifests.as_slice() {
                [only] => only,
                [] => {
                    return Err(ImageError::Unavailable(format!(
                        "{} holds no image",
                        self.path().display()
                    )));
                }
                _ => {
                    return Err(ImageError::Unavailable(format!(
                        "{} holds several images: name one with :TAG",
                        self.path().display()
                    )));
                }
            },
        };
        self.platform_manifest(&chosen.digest)
    }

    /// `digest` itself if it is a manifest; the one for this platform if it is an index.
    pub fn platform_manifest(&self, digest: &Digest) -> Result<Digest, ImageError> {
        let mut digest = digest.clone();
        // An index may name an index; two levels are all any builder writes.
        for _ in 0..3 {
            let m = Manifest::parse(&self.json(&digest, "manifest")?)?;
            if !m.is_index() {
                return Ok(digest);
            }
            digest = m.for_this_platform()?.digest.clone();
        }
        Err(ImageError::Refused("indexes nested too deeply".into()))
    }
}

fn read_capped(path: &Path) -> Result<Vec<u8>, ImageError> {
    let file = std::fs::File::open(path)
        .map_err(|e| ImageError::Unavailable(format!("{}: {e}", path.display())))?;
    read_json(file, &path.display().to_string())
}

/// A small JSON file read whole, refused beyond [`oci::MAX_JSON`] bytes.
fn read_json(from: impl Read, what: &str) -> Result<Vec<u8>, ImageError> {
    let mut bytes = Vec::new();
    from.take(oci::MAX_JSON + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ImageError::Unavailable(format!("{what}: {e}")))?;
    if bytes.len() as u64 > oci::MAX_JSON {
        return Err(ImageError::Refused(format!(
            "{what} is larger than {} bytes",
            oci::MAX_JSON
        )));
    }
    Ok(bytes)
}

/// One small file of an `oci-archive:` tar, read without unpacking the rest.
fn archive_file(path: &Path, want: &str) -> Result<Vec<u8>, ImageError> {
    let file = std::fs::File::open(path)
        .map_err(|e| ImageError::Unavailable(format!("{}: {e}", path.display())))?;
    let mut archive = tar::Archive::new(file);
    let entries = archive
        .entries_with_seek()
        .map_err(|e| ImageError::Unavailable(format!("{}: {e}", path.display())))?;
    for entry in entries {
        let entry = entry.map_err(|e| ImageError::Refused(format!("{}: {e}", path.display())))?;
        let name = entry.path_bytes();
        let name = name.strip_prefix(b"./").unwrap_or(&name);
        if name == want.as_bytes() {
            return read_json(entry, &format!("{}: {want}", path.display()));
        }
    }
    Err(ImageError::Refused(format!(
        "{} has no {want} (is it an OCI archive?)",
        path.display()
    )))
}
