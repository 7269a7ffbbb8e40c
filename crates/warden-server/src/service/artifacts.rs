//! A job's artifacts, read by descriptor (see `warden_worker::artifact_dir`).

use warden_api::ArtifactEntry;
use warden_core::JobId;
use warden_worker::artifact_dir;

use super::{JobService, ServiceError};

impl JobService {
    /// Lists a job's artifact directory without following links.
    pub async fn artifacts(&self, id: JobId) -> Result<Vec<ArtifactEntry>, ServiceError> {
        self.store.get(id).await?;
        let root = self.data.artifacts(id);
        let listing = tokio::task::spawn_blocking(move || artifact_dir::list(&root))
            .await
            .map_err(|e| ServiceError::internal("artifact listing task", e))?;
        Ok(listing
            .entries
            .into_iter()
            .map(|e| ArtifactEntry {
                path: e.path.to_string_lossy().into_owned(),
                kind: e.kind.as_str().into(),
                size: e.size,
            })
            .collect())
    }

    /// Opens one artifact for download: a regular file strictly beneath the job's artifact
    /// directory, reached without following any link.
    pub async fn open_artifact(
        &self,
        id: JobId,
        rel: &str,
    ) -> Result<(std::fs::File, u64), ServiceError> {
        self.store.get(id).await?;
        let rel = artifact_dir::validate_path(rel)?;
        let root = self.data.artifacts(id);
        let opened = tokio::task::spawn_blocking(move || artifact_dir::open_beneath(&root, &rel))
            .await
            .map_err(|e| ServiceError::internal("artifact open task", e))?;
        Ok(opened?)
    }
}
