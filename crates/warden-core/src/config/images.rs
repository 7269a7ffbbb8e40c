//! `images:`: where unpacked images are kept, how big they may be, and how registries are
//! reached.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::Positive;

/// How warden pulls, unpacks and keeps the images job types run in.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagesConfig {
    /// Where unpacked images are kept. Default `<data_dir>/images`.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Size budget of the unpacked images; the least recently used ones no job is using are
    /// removed to stay within it.
    #[serde(default = "default_cache_mb")]
    pub cache_mb: Positive,
    /// The most one image may unpack to (the sum of its files' sizes).
    #[serde(default = "default_max_unpacked_mb")]
    pub max_unpacked_mb: Positive,
    /// The most entries (files, directories, links, whiteouts) one image's layers may hold.
    #[serde(default = "default_max_entries")]
    pub max_entries: Positive,
    /// A pull (manifest, config and every layer) that takes longer fails the job
    /// `error: image_unavailable`.
    #[serde(default = "default_pull_timeout_s")]
    pub pull_timeout_s: Positive,
    /// How each registry host (`host[:port]`, as written in references) is reached. A
    /// registry not listed is reached over https with the system's CAs, anonymously.
    #[serde(default)]
    pub registries: BTreeMap<String, RegistryConfig>,
}

impl Default for ImagesConfig {
    fn default() -> Self {
        ImagesConfig {
            dir: None,
            cache_mb: default_cache_mb(),
            max_unpacked_mb: default_max_unpacked_mb(),
            max_entries: default_max_entries(),
            pull_timeout_s: default_pull_timeout_s(),
            registries: BTreeMap::new(),
        }
    }
}

/// One registry host.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Plain http instead of https (a registry on loopback or a private network).
    #[serde(default)]
    pub insecure_http: bool,
    /// A CA bundle (PEM) the registry's certificate is checked against, besides the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Basic auth: the user name, and the name of the secret (under `secrets:`) holding the
    /// password or token.
    #[serde(default)]
    pub credential: Option<RegistryCredential>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryCredential {
    pub username: String,
    pub secret: String,
}

fn default_cache_mb() -> Positive {
    Positive(20 * 1024)
}
fn default_max_unpacked_mb() -> Positive {
    Positive(8 * 1024)
}
fn default_max_entries() -> Positive {
    Positive(500_000)
}
fn default_pull_timeout_s() -> Positive {
    Positive(600)
}

impl ImagesConfig {
    /// Rules spanning this section and the rest of the file.
    pub(super) fn check(
        &self,
        secrets: &BTreeMap<String, super::SecretSource>,
    ) -> Result<(), String> {
        if let Some(dir) = &self.dir
            && !dir.is_absolute()
        {
            return Err(format!(
                "images.dir {} must be an absolute path",
                dir.display()
            ));
        }
        for (host, r) in &self.registries {
            if host.is_empty()
                || !host.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
                })
            {
                return Err(format!(
                    "images.registries: {host:?} is not a registry host (host or host:port)"
                ));
            }
            if r.insecure_http && r.ca_file.is_some() {
                return Err(format!(
                    "images.registries.{host}: ca_file is for https; insecure_http registries have no certificate"
                ));
            }
            if let Some(ca) = &r.ca_file
                && !ca.is_absolute()
            {
                return Err(format!(
                    "images.registries.{host}.ca_file {} must be an absolute path",
                    ca.display()
                ));
            }
            if let Some(c) = &r.credential {
                if c.username.is_empty()
                    || c.username.len() > 256
                    || c.username.chars().any(char::is_control)
                {
                    return Err(format!(
                        "images.registries.{host}.credential.username must be 1 to 256 \
                         characters, none of them a control character"
                    ));
                }
                if !secrets.contains_key(&c.secret) {
                    return Err(format!(
                        "images.registries.{host}.credential.secret {:?} is not defined under secrets:",
                        c.secret
                    ));
                }
            }
        }
        Ok(())
    }
}
