//! Image references as a job type names them, and the digests they are pinned to.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// A content digest, `sha256:` and 64 lowercase hex digits (the only algorithm accepted).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(String);

impl Digest {
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn from_hex(hex: &str) -> Result<Digest, String> {
        format!("sha256:{hex}").parse()
    }
}

impl FromStr for Digest {
    type Err = String;

    fn from_str(s: &str) -> Result<Digest, String> {
        let Some(hex) = s.strip_prefix("sha256:") else {
            return Err(format!("digest {s:?} is not sha256:<64 hex digits>"));
        };
        if hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(Digest(s.to_string()))
        } else {
            Err(format!(
                "digest {s:?} is not sha256:<64 lowercase hex digits>"
            ))
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Where a job type's image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// An OCI distribution registry: `host[:port]/repository[:tag][@sha256:…]`. There is no
    /// default registry: the host is always named.
    Registry {
        registry: String,
        repository: String,
        tag: Option<String>,
        digest: Option<Digest>,
    },
    /// An OCI image layout directory: `oci:DIR[:TAG]`.
    OciDir { dir: PathBuf, tag: Option<String> },
    /// A tar of an OCI image layout: `oci-archive:PATH[:TAG]`.
    OciArchive { path: PathBuf, tag: Option<String> },
}

impl ImageRef {
    /// The registry host, for a registry image.
    pub fn registry(&self) -> Option<&str> {
        match self {
            ImageRef::Registry { registry, .. } => Some(registry),
            _ => None,
        }
    }

    /// The digest written in the reference itself (`…@sha256:…`), if any.
    pub fn pinned(&self) -> Option<&Digest> {
        match self {
            ImageRef::Registry { digest, .. } => digest.as_ref(),
            _ => None,
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Registry {
                registry,
                repository,
                tag,
                digest,
            } => {
                write!(f, "{registry}/{repository}")?;
                if let Some(t) = tag {
                    write!(f, ":{t}")?;
                }
                if let Some(d) = digest {
                    write!(f, "@{d}")?;
                }
                Ok(())
            }
            ImageRef::OciDir { dir, tag } => {
                write!(f, "oci:{}", dir.display())?;
                tag.iter().try_for_each(|t| write!(f, ":{t}"))
            }
            ImageRef::OciArchive { path, tag } => {
                write!(f, "oci-archive:{}", path.display())?;
                tag.iter().try_for_each(|t| write!(f, ":{t}"))
            }
        }
    }
}

fn valid_tag(t: &str) -> bool {
    // The distribution spec: [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn valid_repository(r: &str) -> bool {
    // Path components of [a-z0-9]+ joined by ., _, __ or -; checked loosely but strictly
    // enough that nothing but those characters and '/' gets through.
    !r.is_empty()
        && r.len() <= 255
        && r.split('/').all(|c| {
            !c.is_empty()
                && c.bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                && c.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                })
        })
}

fn local(rest: &str, what: &str) -> Result<(PathBuf, Option<String>), String> {
    if !rest.starts_with('/') || rest.split('/').any(|c| c == "..") {
        return Err(format!(
            "{what}:{rest} must name an absolute path without '..'"
        ));
    }
    // `PATH:TAG`: a tag is what follows the last ':' when it is a valid tag and no '/' follows.
    if let Some((path, tag)) = rest.rsplit_once(':')
        && !tag.contains('/')
    {
        if !valid_tag(tag) {
            return Err(format!("{what}:{rest}: tag {tag:?} is not a valid tag"));
        }
        return Ok((PathBuf::from(path), Some(tag.to_string())));
    }
    Ok((PathBuf::from(rest), None))
}

impl FromStr for ImageRef {
    type Err = String;

    fn from_str(s: &str) -> Result<ImageRef, String> {
        if s.len() > 512 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "image {s:?} is not a reference (spaces or too long)"
            ));
        }
        if let Some(rest) = s.strip_prefix("oci:") {
            let (dir, tag) = local(rest, "oci")?;
            return Ok(ImageRef::OciDir { dir, tag });
        }
        if let Some(rest) = s.strip_prefix("oci-archive:") {
            let (path, tag) = local(rest, "oci-archive")?;
            return Ok(ImageRef::OciArchive { path, tag });
        }
        if let Some((scheme, _)) = s.split_once(':')
            && matches!(
                scheme,
                "docker" | "docker-archive" | "docker-daemon" | "containers-storage"
            )
        {
            return Err(format!(
                "image {s:?}: {scheme}: sources are not supported; use a registry reference \
                 (host:port/repo:tag), oci:DIR[:TAG] or oci-archive:PATH[:TAG]"
            ));
        }
        let (name, digest) = match s.split_once('@') {
            Some((n, d)) => (
                n,
                Some(
                    d.parse::<Digest>()
                        .map_err(|e| format!("image {s:?}: {e}"))?,
                ),
            ),
            None => (s, None),
        };
        let Some((registry, path)) = name.split_once('/') else {
            return Err(format!(
                "image {s:?} names no registry: write host[:port]/repository[:tag] \
                 (warden has no default registry)"
            ));
        };
        if !(registry.contains('.') || registry.contains(':') || registry == "localhost")
            || !registry
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
        {
            return Err(format!(
                "image {s:?}: {registry:?} is not a registry host; write host[:port]/repository[:tag] \
                 (warden has no default registry)"
            ));
        }
        let (repository, tag) = match path.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => {
                if !valid_tag(t) {
                    return Err(format!("image {s:?}: tag {t:?} is not a valid tag"));
                }
                (r, Some(t.to_string()))
            }
            _ => (path, None),
        };
        if !valid_repository(repository) {
            return Err(format!(
                "image {s:?}: repository {repository:?} must be lowercase letters, digits and . _ - /"
            ));
        }
        Ok(ImageRef::Registry {
            registry: registry.to_string(),
            repository: repository.to_string(),
            tag: if tag.is_none() && digest.is_none() {
                Some("latest".into())
            } else {
                tag
            },
            digest,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_or_say_what_to_write() {
        let r: ImageRef = "127.0.0.1:5000/team/python:3.12".parse().unwrap();
        assert_eq!(r.registry(), Some("127.0.0.1:5000"));
        assert_eq!(r.to_string(), "127.0.0.1:5000/team/python:3.12");
        let d = format!("sha256:{}", "a".repeat(64));
        let r: ImageRef = format!("registry.example/x@{d}").parse().unwrap();
        assert_eq!(r.pinned().map(|d| d.to_string()), Some(d.clone()));
        let r: ImageRef = "localhost/x".parse().unwrap();
        assert_eq!(r.to_string(), "localhost/x:latest");
        assert_eq!(
            "oci:/srv/images/py:3.12".parse::<ImageRef>().unwrap(),
            ImageRef::OciDir {
                dir: "/srv/images/py".into(),
                tag: Some("3.12".into())
            }
        );
        assert_eq!(
            "oci-archive:/srv/py.tar".parse::<ImageRef>().unwrap(),
            ImageRef::OciArchive {
                path: "/srv/py.tar".into(),
                tag: None
            }
        );
        for (bad, says) in [
            ("python:3.12", "names no registry"),
            ("team/python", "is not a registry host"),
            ("r.example/Team/x", "must be lowercase"),
            ("r.example/x:bad tag", "spaces"),
            ("r.example/x@sha256:abc", "64"),
            ("r.example/x@md5:abc", "sha256"),
            ("oci:relative/dir", "absolute path"),
            ("oci:/a/../etc", "absolute path"),
            ("docker-archive:/x.tar", "not supported"),
            ("r.example/x:-bad", "not a valid tag"),
        ] {
            let err = bad.parse::<ImageRef>().unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
