//! Artifacts on S3-compatible storage (`artifact_store:`), through the `object_store` crate:
//! `<prefix>/<job id>/<path>` per file. A remote worker's upload lands on whichever control
//! plane it is connected to, under the job's lease, in that replica's artifact directory; each
//! file is then streamed to the bucket (multipart, 8 MiB parts, never held whole in memory) and
//! removed locally, so replicas need no shared filesystem. Listings and downloads, on every
//! replica, read the bucket; the path rules are the same as for a directory (the path is
//! checked by `artifact_dir::validate_path` before it names an object).

use std::path::Path as FsPath;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use warden_api::ArtifactEntry;
use warden_core::JobId;
use warden_core::config::ArtifactStoreConfig;
use warden_worker::artifact_dir;

/// Bytes per multipart part (S3's minimum is 5 MiB).
const PART_BYTES: usize = 8 << 20;
/// Parts in flight at once while a file is streamed up.
const PARTS_IN_FLIGHT: usize = 2;

#[derive(Debug, Clone)]
pub struct S3Artifacts {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    url: String,
}

/// A failure of the bucket, with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("artifact store {url}: {what}: {source}")]
pub struct S3Error {
    url: String,
    what: String,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl S3Artifacts {
    /// The bucket of `config`, signed with the two secrets it names (their values from
    /// `secret`). Nothing is contacted yet.
    pub fn connect(
        config: &ArtifactStoreConfig,
        secret: impl Fn(&str) -> Option<Vec<u8>>,
    ) -> Result<S3Artifacts, String> {
        let loc = config.location()?;
        let value = |name: &str| -> Result<String, String> {
            let v = secret(name)
                .ok_or_else(|| format!("artifact_store: secret {name:?} is not loaded"))?;
            String::from_utf8(v)
                .map(|s| s.trim().to_string())
                .map_err(|_| format!("artifact_store: secret {name:?} is not UTF-8"))
        };
        // The TLS of the bucket's connections uses the same provider as warden's own.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&loc.bucket)
            .with_region(config.region.as_deref().unwrap_or("us-east-1"))
            .with_access_key_id(value(&config.access_key_id_secret)?)
            .with_secret_access_key(value(&config.secret_access_key_secret)?);
        if let Some(e) = &config.endpoint {
            b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
        }
        let store = b
            .build()
            .map_err(|e| format!("artifact_store {}: {e}", config.url))?;
        Ok(S3Artifacts {
            store: Arc::new(store),
            prefix: loc.prefix,
            url: config.url.clone(),
        })
    }

    fn err(&self, what: String, e: impl std::error::Error + Send + Sync + 'static) -> S3Error {
        S3Error {
            url: self.url.clone(),
            what,
            source: Box::new(e),
        }
    }

    fn job_prefix(&self, id: JobId) -> Path {
        if self.prefix.is_empty() {
            Path::from(id.to_string())
        } else {
            Path::from(format!("{}/{id}", self.prefix))
        }
    }

    /// The object of one artifact: its path's segments, each as the store encodes it.
    fn key(&self, id: JobId, rel: &FsPath) -> Result<Path, S3Error> {
        let mut key = self.job_prefix(id);
        for part in rel.components() {
            let s = part.as_os_str().to_str().ok_or_else(|| {
                self.err(
                    format!("{id}/{}", rel.display()),
                    std::io::Error::other("a name that is not UTF-8 cannot be an object key"),
                )
            })?;
            key = key.clone().join(s);
        }
        Ok(key)
    }

    /// Streams the local file `file` (a job's artifact `rel`) into the bucket.
    pub async fn put_file(&self, id: JobId, rel: &FsPath, file: &FsPath) -> Result<u64, S3Error> {
        let key = self.key(id, rel)?;
        let what = || format!("upload {id}/{}", rel.display());
        let upload = self
            .store
            .put_multipart(&key)
            .await
            .map_err(|e| self.err(what(), e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut f = tokio::fs::File::open(file)
            .await
            .map_err(|e| self.err(what(), e))?;
        let mut total = 0u64;
        loop {
            use tokio::io::AsyncReadExt;
            let mut buf = vec![0u8; 1 << 20];
            let n = f.read(&mut buf).await.map_err(|e| self.err(what(), e))?;
            if n == 0 {
                break;
            }
            buf.truncate(n);
            total += n as u64;
            // Back pressure: at most this many parts held while they travel.
            writer
                .wait_for_capacity(PARTS_IN_FLIGHT)
                .await
                .map_err(|e| self.err(what(), e))?;
            writer.put(Bytes::from(buf));
        }
        writer.finish().await.map_err(|e| self.err(what(), e))?;
        Ok(total)
    }

    /// A job's artifacts: every object under its prefix, as files, sorted by path.
    pub async fn list(&self, id: JobId) -> Result<(Vec<ArtifactEntry>, bool), S3Error> {
        let prefix = self.job_prefix(id);
        let mut listing = self.store.list(Some(&prefix));
        let mut entries = Vec::new();
        let mut truncated = false;
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| self.err(format!("list {id}"), e))?;
            let Some(rel) = meta.location.prefix_match(&prefix) else {
                continue;
            };
            let rel: Vec<String> = rel.map(|p| p.as_ref().to_string()).collect();
            if entries.len() >= artifact_dir::MAX_ENTRIES {
                truncated = true;
                break;
            }
            entries.push(ArtifactEntry {
                path: rel.join("/"),
                path_hex: None,
                kind: "file".into(),
                size: meta.size,
            });
        }
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        Ok((entries, truncated))
    }

    /// One artifact's bytes as a stream, and its size; `None` when there is no such object.
    pub async fn open(
        &self,
        id: JobId,
        rel: &FsPath,
    ) -> Result<Option<(BoxStream<'static, std::io::Result<Bytes>>, u64)>, S3Error> {
        let key = self.key(id, rel)?;
        match self.store.get(&key).await {
            Ok(got) => {
                let size = got.meta.size;
                let stream = got.into_stream().map(|r| r.map_err(std::io::Error::other));
                Ok(Some((stream.boxed(), size)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(format!("download {id}/{}", rel.display()), e)),
        }
    }

    /// Deletes every object of a job; returns how many.
    pub async fn delete_job(&self, id: JobId) -> Result<u64, S3Error> {
        let prefix = self.job_prefix(id);
        let keys = self
            .store
            .list(Some(&prefix))
            .map(|m| m.map(|m| m.location))
            .boxed();
        let mut deleted = self.store.delete_stream(keys);
        let mut n = 0;
        while let Some(r) = deleted.next().await {
            match r {
                Ok(_) => n += 1,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.err(format!("delete {id}"), e)),
            }
        }
        Ok(n)
    }
}
