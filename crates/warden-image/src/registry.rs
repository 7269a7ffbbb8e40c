//! Pulling from an OCI distribution registry (with `oci-client`): a tag resolved to the
//! manifest digest for this platform, then that manifest, its config and its layers, each
//! size-capped and checked against its digest.

use std::path::Path;

use futures_util::StreamExt;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use tokio::io::AsyncWriteExt;
use warden_core::config::RegistryConfig;
use warden_core::image::{Digest, ImageRef};

use crate::ImageError;
use crate::oci::{self, Descriptor, Manifest};

pub(crate) struct Registry {
    client: Client,
    auth: RegistryAuth,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> ImageError {
    ImageError::Unavailable(format!("{what}: {e}"))
}

impl Registry {
    /// A client for `host`, with its configuration and, if it has a credential, the password.
    pub fn new(
        host: &str,
        config: Option<&RegistryConfig>,
        password: Option<String>,
        timeout: std::time::Duration,
    ) -> Result<Registry, ImageError> {
        // reqwest is built without a provider of its own: ring, as everywhere in warden.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut extra = Vec::new();
        let mut protocol = ClientProtocol::Https;
        if let Some(c) = config {
            if c.insecure_http {
                protocol = ClientProtocol::HttpsExcept(vec![host.to_string()]);
            }
            if let Some(ca) = &c.ca_file {
                let data = std::fs::read(ca)
                    .map_err(|e| unavailable(&format!("registry CA {}", ca.display()), e))?;
                extra.push(Certificate {
                    encoding: CertificateEncoding::Pem,
                    data,
                });
            }
        }
        let client = Client::new(ClientConfig {
            protocol,
            extra_root_certificates: extra,
            // warden picks the platform itself (see `Manifest::for_this_platform`).
            platform_resolver: None,
            read_timeout: Some(timeout),
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            ..ClientConfig::default()
        });
        let auth = match (config.and_then(|c| c.credential.as_ref()), password) {
            (Some(c), Some(p)) => RegistryAuth::Basic(c.username.clone(), p),
            _ => RegistryAuth::Anonymous,
        };
        Ok(Registry { client, auth })
    }

    fn reference(r: &ImageRef, digest: Option<&Digest>) -> Reference {
        let ImageRef::Registry {
            registry,
            repository,
            tag,
            digest: pinned,
        } = r
        else {
            unreachable!("a registry client is only made for registry references")
        };
        match digest.or(pinned.as_ref()) {
            Some(d) => Reference::with_digest(registry.clone(), repository.clone(), d.to_string()),
            None => Reference::with_tag(
                registry.clone(),
                repository.clone(),
                tag.clone().unwrap_or_else(|| "latest".into()),
            ),
        }
    }

    async fn manifest_bytes(&self, reference: &Reference) -> Result<(Vec<u8>, Digest), ImageError> {
        let (bytes, digest) = self
            .client
            .pull_manifest_raw(reference, &self.auth, oci::ACCEPTED_MANIFESTS)
            .await
            .map_err(|e| unavailable(&format!("manifest of {reference}"), e))?;
        if bytes.len() as u64 > oci::MAX_JSON {
            return Err(ImageError::Refused(format!(
                "the manifest of {reference} is larger than {} bytes",
                oci::MAX_JSON
            )));
        }
        let digest: Digest = digest.parse().map_err(ImageError::Refused)?;
        oci::check(&bytes, &digest, "manifest")?;
        Ok((bytes.to_vec(), digest))
    }

    /// The digest of the manifest for this platform that `r` names now.
    pub async fn resolve(&self, r: &ImageRef) -> Result<Digest, ImageError> {
        let (bytes, digest) = self.manifest_bytes(&Self::reference(r, None)).await?;
        if let Some(pinned) = r.pinned()
            && *pinned != digest
        {
            return Err(ImageError::Refused(format!(
                "the registry answered {r} with a manifest whose digest is {digest}"
            )));
        }
        let m = Manifest::parse(&bytes)?;
        if m.is_index() {
            return Ok(m.for_this_platform()?.digest.clone());
        }
        Ok(digest)
    }

    /// The manifest `digest` names, checked.
    pub async fn manifest(&self, r: &ImageRef, digest: &Digest) -> Result<Vec<u8>, ImageError> {
        let (bytes, got) = self
            .manifest_bytes(&Self::reference(r, Some(digest)))
            .await?;
        if got != *digest {
            return Err(ImageError::Refused(format!(
                "asked for manifest {digest}, the registry sent {got}"
            )));
        }
        Ok(bytes)
    }

    /// A blob written to `to`, no longer than its descriptor says (the digest is checked as
    /// it is unpacked, and here for small blobs read whole).
    pub async fn blob(&self, r: &ImageRef, d: &Descriptor, to: &Path) -> Result<(), ImageError> {
        let reference = Self::reference(r, None);
        let digest = d.digest.to_string();
        let mut stream = self
            .client
            .pull_blob_stream(&reference, digest.as_str())
            .await
            .map_err(|e| unavailable(&format!("blob {digest}"), e))?
            .stream;
        let mut file = tokio::fs::File::create(to)
            .await
            .map_err(|e| unavailable(&format!("{}", to.display()), e))?;
        let mut written = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| unavailable(&format!("blob {digest}"), e))?;
            written += chunk.len() as u64;
            if written > d.size {
                return Err(ImageError::Refused(format!(
                    "blob {digest} is longer than the {} bytes its descriptor says",
                    d.size
                )));
            }
            file.write_all(&chunk)
                .await
                .map_err(|e| unavailable(&format!("{}", to.display()), e))?;
        }
        file.flush()
            .await
            .map_err(|e| unavailable(&format!("{}", to.display()), e))?;
        Ok(())
    }
}
