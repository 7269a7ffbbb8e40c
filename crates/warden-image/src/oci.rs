//! The parts of the OCI image format warden reads: manifests, indexes, image configs, and a
//! reader that checks a blob against its digest while it is read.

use std::collections::BTreeMap;
use std::io::{self, Read};

use serde::Deserialize;
use sha2::Digest as _;
use warden_core::image::Digest;

use crate::ImageError;

/// The largest manifest, index or image config warden reads.
pub(crate) const MAX_JSON: u64 = 4 << 20;

pub(crate) const ACCEPTED_MANIFESTS: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Descriptor {
    pub digest: Digest,
    pub size: u64,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Platform {
    pub architecture: String,
    pub os: String,
}

/// A manifest or an index: which one is told by which fields are there.
#[derive(Debug, Deserialize)]
pub(crate) struct Manifest {
    #[serde(default)]
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

impl Manifest {
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ImageError> {
        serde_json::from_slice(bytes)
            .map_err(|e| ImageError::Refused(format!("the manifest is not valid JSON: {e}")))
    }

    pub fn is_index(&self) -> bool {
        self.config.is_none() && !self.manifests.is_empty()
    }

    /// From an index: the manifest for this machine's platform.
    pub fn for_this_platform(&self) -> Result<&Descriptor, ImageError> {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        self.manifests
            .iter()
            .find(|m| {
                m.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == arch)
            })
            .ok_or_else(|| {
                ImageError::Unavailable(format!("the image has no manifest for linux/{arch}"))
            })
    }
}

/// The image config: what the image says about running it.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct ImageConfigFile {
    #[serde(default)]
    pub config: Option<RunConfig>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct RunConfig {
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    #[serde(rename = "User", default)]
    pub user: Option<String>,
}

/// Reads a blob, failing if it is longer than `max` bytes; [`Verified::finish`] reads what is
/// left and checks the digest.
pub(crate) struct Verified<R> {
    inner: R,
    hasher: sha2::Sha256,
    read: u64,
    max: u64,
    expect: Digest,
}

impl<R: Read> Verified<R> {
    pub fn new(inner: R, expect: &Digest, max: u64) -> Verified<R> {
        Verified {
            inner,
            hasher: sha2::Sha256::new(),
            read: 0,
            max,
            expect: expect.clone(),
        }
    }

    /// Drains the rest and checks the digest: the bytes were only ever used provisionally.
    pub fn finish(mut self) -> Result<u64, ImageError> {
        io::copy(&mut self, &mut io::sink())
            .map_err(|e| ImageError::Refused(format!("blob {}: {e}", self.expect)))?;
        let got = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        if got != self.expect.as_str() {
            return Err(ImageError::Refused(format!(
                "blob {} does not match its digest (its content hashes to {got})",
                self.expect
            )));
        }
        Ok(self.read)
    }
}

impl<R: Read> Read for Verified<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("longer than the {} bytes its descriptor says", self.max),
            ));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Checks `bytes` are what `digest` names.
pub(crate) fn check(bytes: &[u8], digest: &Digest, what: &str) -> Result<(), ImageError> {
    let got = format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)));
    if got == digest.as_str() {
        Ok(())
    } else {
        Err(ImageError::Refused(format!(
            "the {what} {digest} does not match its digest (its content hashes to {got})"
        )))
    }
}

/// A layer's tar stream, decompressed by what its first bytes say it is.
pub(crate) fn decompress<'a, R: Read + 'a>(
    mut reader: io::BufReader<R>,
) -> Result<Box<dyn Read + 'a>, ImageError> {
    use std::io::BufRead;
    let head = reader.fill_buf().map_err(|e| {
        let m = format!("reading a layer: {e}");
        if e.kind() == io::ErrorKind::InvalidData {
            ImageError::Refused(m)
        } else {
            ImageError::Unavailable(m)
        }
    })?;
    match head {
        [0x1f, 0x8b, ..] => Ok(Box::new(flate2::bufread::MultiGzDecoder::new(reader))),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Err(ImageError::Refused(
            "zstd-compressed layers are not supported; build the image with gzip layers".into(),
        )),
        _ => Ok(Box::new(reader)),
    }
}
