//! `artifact_store:` — artifacts on S3-compatible storage instead of a directory every replica
//! shares.

use serde::Deserialize;

/// Where a replicated control plane keeps artifacts: `s3://bucket/prefix`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactStoreConfig {
    /// `s3://BUCKET[/PREFIX]`.
    pub url: String,
    /// An S3-compatible server's address (`https://…`, or `http://` on loopback); absent: AWS.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Absent: `us-east-1`.
    #[serde(default)]
    pub region: Option<String>,
    /// Names of secrets (under `secrets:`) holding the access key id and the secret key.
    pub access_key_id_secret: String,
    pub secret_access_key_secret: String,
}

/// A checked `s3://` location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    /// Without leading or trailing `/`; may be empty.
    pub prefix: String,
}

impl ArtifactStoreConfig {
    /// The bucket and prefix, or what is wrong with the URL.
    pub fn location(&self) -> Result<S3Location, String> {
        let rest = self.url.strip_prefix("s3://").ok_or_else(|| {
            format!(
                "artifact_store.url {:?}: only s3://BUCKET[/PREFIX] is supported",
                self.url
            )
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !bucket.starts_with(['-', '.'])
            && !bucket.ends_with(['-', '.']);
        if !valid_bucket {
            return Err(format!(
                "artifact_store.url {:?}: {bucket:?} is not a bucket name (3-63 of a-z 0-9 . -)",
                self.url
            ));
        }
        let prefix = prefix.trim_matches('/');
        if prefix
            .split('/')
            .any(|s| s == "." || s == ".." || (s.is_empty() && !prefix.is_empty()))
            || prefix.chars().any(char::is_control)
        {
            return Err(format!(
                "artifact_store.url {:?}: the prefix must be plain path segments",
                self.url
            ));
        }
        Ok(S3Location {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }

    /// Every rule that does not need the network.
    pub fn check(
        &self,
        secrets: &std::collections::BTreeMap<String, super::SecretSource>,
    ) -> Result<(), String> {
        self.location()?;
        if let Some(e) = &self.endpoint {
            let plain = e.strip_prefix("http://");
            let ok = e.starts_with("https://")
                || plain.is_some_and(|h| {
                    let host = h.split(['/', ':']).next().unwrap_or("");
                    host == "localhost"
                        || host
                            .parse::<std::net::IpAddr>()
                            .is_ok_and(|ip| ip.is_loopback())
                });
            if !ok {
                return Err(format!(
                    "artifact_store.endpoint {e:?}: https://, or http:// only on loopback"
                ));
            }
        }
        for (key, name) in [
            ("access_key_id_secret", &self.access_key_id_secret),
            ("secret_access_key_secret", &self.secret_access_key_secret),
        ] {
            if !secrets.contains_key(name) {
                return Err(format!(
                    "artifact_store.{key}: no secret {name:?} under secrets:"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str, endpoint: Option<&str>) -> ArtifactStoreConfig {
        ArtifactStoreConfig {
            url: url.into(),
            endpoint: endpoint.map(str::to_string),
            region: None,
            access_key_id_secret: "K".into(),
            secret_access_key_secret: "S".into(),
        }
    }

    #[test]
    fn urls_endpoints_and_secrets_are_checked() {
        let secrets = [("K", "/k"), ("S", "/s")]
            .into_iter()
            .map(|(n, p)| (n.to_string(), super::super::SecretSource::File(p.into())))
            .collect();
        let loc = cfg("s3://warden-artifacts/prod/eu/", None)
            .location()
            .unwrap();
        assert_eq!(
            (loc.bucket.as_str(), loc.prefix.as_str()),
            ("warden-artifacts", "prod/eu")
        );
        assert_eq!(cfg("s3://bkt", None).location().unwrap().prefix, "");
        for bad in [
            "https://bkt/x",
            "s3://",
            "s3://Upper",
            "s3://b",
            "s3://bkt/a/../b",
            "s3://bkt/a//b",
        ] {
            assert!(cfg(bad, None).check(&secrets).is_err(), "{bad}");
        }
        assert!(
            cfg("s3://bkt", Some("http://127.0.0.1:9000"))
                .check(&secrets)
                .is_ok()
        );
        assert!(
            cfg("s3://bkt", Some("https://minio.internal"))
                .check(&secrets)
                .is_ok()
        );
        let e = cfg("s3://bkt", Some("http://minio.internal"))
            .check(&secrets)
            .unwrap_err();
        assert!(e.contains("only on loopback"), "{e}");
        let mut missing = cfg("s3://bkt", None);
        missing.secret_access_key_secret = "NOPE".into();
        assert!(
            missing
                .check(&secrets)
                .unwrap_err()
                .contains("no secret \"NOPE\"")
        );
    }
}
