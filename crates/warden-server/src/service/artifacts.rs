//! A job's artifacts, read by descriptor (see `warden_worker::artifact_dir`).

use bytes::Bytes;
use futures::stream::BoxStream;
use warden_api::ArtifactEntry;
use warden_core::JobId;
use warden_worker::artifact_dir;

use super::{JobService, ServiceError};
use crate::auth::{Caller, Scope};

/// One artifact, ready to be sent: a file of the artifact directory, or an object's stream.
pub enum ArtifactBody {
    File(std::fs::File, u64),
    Stream(BoxStream<'static, std::io::Result<Bytes>>, u64),
}

impl ArtifactBody {
    pub fn len(&self) -> u64 {
        match self {
            ArtifactBody::File(_, n) | ArtifactBody::Stream(_, n) => *n,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl JobService {
    /// Lists a job's artifact directory without following links: its entries (names exact:
    /// `path_hex` where they are not UTF-8) and whether the listing stopped at its limit.
    pub async fn artifacts(
        &self,
        caller: &Caller,
        id: JobId,
    ) -> Result<(Vec<ArtifactEntry>, bool), ServiceError> {
        self.job(caller, id, Scope::Read).await?;
        if let Some(s3) = &self.s3 {
            return s3
                .list(id)
                .await
                .map_err(|e| ServiceError::internal("artifact store", e));
        }
        let root = self.data.artifacts(id);
        let listing = tokio::task::spawn_blocking(move || artifact_dir::list(&root))
            .await
            .map_err(|e| ServiceError::internal("artifact listing task", e))?;
        let entries = listing
            .entries
            .into_iter()
            .map(|e| {
                use std::os::unix::ffi::OsStrExt;
                let bytes = e.path.as_os_str().as_bytes();
                ArtifactEntry {
                    path: String::from_utf8_lossy(bytes).into_owned(),
                    path_hex: std::str::from_utf8(bytes)
                        .is_err()
                        .then(|| bytes.iter().map(|b| format!("{b:02x}")).collect()),
                    kind: e.kind.as_str().into(),
                    size: e.size,
                }
            })
            .collect();
        Ok((entries, listing.truncated))
    }

    /// Opens one artifact for download: a regular file strictly beneath the job's artifact
    /// directory, reached without following any link.
    pub async fn open_artifact(
        &self,
        caller: &Caller,
        id: JobId,
        rel: &[u8],
    ) -> Result<ArtifactBody, ServiceError> {
        self.job(caller, id, Scope::Read).await?;
        let rel = artifact_dir::validate_path_bytes(rel)?;
        self.audit(caller.audit(
            "artifact.download",
            Some(format!("{id}/{}", rel.display())),
            "ok",
        ))
        .await;
        if let Some(s3) = &self.s3 {
            return match s3.open(id, &rel).await {
                Ok(Some((stream, len))) => Ok(ArtifactBody::Stream(stream, len)),
                Ok(None) => Err(artifact_dir::ArtifactError::NotFound(rel).into()),
                Err(e) => Err(ServiceError::internal("artifact store", e)),
            };
        }
        let root = self.data.artifacts(id);
        let opened = tokio::task::spawn_blocking(move || artifact_dir::open_beneath(&root, &rel))
            .await
            .map_err(|e| ServiceError::internal("artifact open task", e))?;
        let (file, len) = opened?;
        Ok(ArtifactBody::File(file, len))
    }
}
