//! `UploadArtifacts`: a worker sends a job's artifacts before completing it. Every piece is
//! fenced by the job's lease (a worker that lost it mid-upload writes nothing more), and
//! written on the blocking pool, beneath the job's artifact directory, never through a link.
//! With `artifact_store:`, each file, once whole, is streamed on to the bucket and removed
//! here; the upload answers only when every file is in the bucket.

use std::path::{Path, PathBuf};

use tonic::{Request, Response, Status, Streaming};
use warden_api::ErrorCode;
use warden_proto::{MAX_CHUNK, lease_from_pb, pb};
use warden_store::Lease;
use warden_worker::artifact_dir;

use super::Workers;
use crate::service::ServiceError;

/// The file being written: its path, the file, and how much of it has arrived.
type Open = (PathBuf, std::fs::File, u64);

impl Workers {
    pub(super) async fn upload(
        &self,
        req: Request<Streaming<pb::ArtifactUpload>>,
    ) -> Result<Response<pb::UploadArtifactsResponse>, Status> {
        self.auth.check_worker(&req)?;
        let mut inbound = req.into_inner();
        let (mut files, mut bytes) = (0u32, 0u64);
        let mut open: Option<Open> = None;
        let mut job = None;
        while let Some(msg) = inbound.message().await? {
            let lease = lease_from_pb(msg.lease).map_err(|e| Status::invalid_argument(e.0))?;
            self.check_lease(&lease).await?;
            if msg.data.len() > MAX_CHUNK {
                return Err(Status::invalid_argument(
                    "artifact pieces are at most 1 MiB",
                ));
            }
            let rel = artifact_dir::validate_path(&msg.path)
                .map_err(|e| super::super::status(ServiceError::from(e)))?;
            let dir = self.hub.data.artifacts(lease.job_id);
            job = Some(lease.job_id);
            let same = matches!(&open, Some((p, _, _)) if *p == rel);
            if !same {
                if let Some((done, _, _)) = open.take() {
                    self.publish(lease.job_id, &done).await?;
                }
                if msg.offset != 0 {
                    return Err(Status::invalid_argument(format!(
                        "artifact {:?} must start at offset 0",
                        msg.path
                    )));
                }
                open = Some((rel.clone(), create(dir, rel).await?, 0));
                files += 1;
            }
            let Some((path, file, written)) = open.take() else {
                continue;
            };
            if msg.offset != written {
                return Err(Status::invalid_argument(format!(
                    "artifact {:?}: piece at offset {} does not follow {}",
                    msg.path, msg.offset, written
                )));
            }
            let n = msg.data.len() as u64;
            let file = write(file, msg.data).await?;
            open = Some((path, file, written + n));
            bytes += n;
        }
        if let (Some(id), Some((done, _, _))) = (job, open.take()) {
            self.publish(id, &done).await?;
        }
        Ok(Response::new(pb::UploadArtifactsResponse { files, bytes }))
    }

    /// With a bucket: the whole file `rel` of job `id` streamed to it, then removed here.
    async fn publish(&self, id: warden_core::JobId, rel: &Path) -> Result<(), Status> {
        let Some(s3) = &self.hub.s3 else {
            return Ok(());
        };
        let local = self.hub.data.artifacts(id).join(rel);
        s3.put_file(id, rel, &local).await.map_err(|e| {
            tracing::error!(job = %id, error = %e, "artifact upload to the bucket failed");
            Status::unavailable(format!("artifact store: {e}"))
        })?;
        let _ = tokio::fs::remove_file(&local).await;
        Ok(())
    }

    /// The upload belongs to the current attempt only: checked before every write.
    async fn check_lease(&self, lease: &Lease) -> Result<(), Status> {
        let job = self
            .hub
            .store
            .get(lease.job_id)
            .await
            .map_err(|e| super::super::status(e.into()))?;
        if job.status != warden_core::JobStatus::Running
            || job.lease_token != lease.token
            || job.lease_owner.as_deref() != Some(lease.worker.as_str())
        {
            return Err(super::super::status(ServiceError::new(
                ErrorCode::LeaseLost,
                format!("lease on job {} is no longer held", lease.job_id),
            )));
        }
        Ok(())
    }
}

async fn create(dir: PathBuf, rel: PathBuf) -> Result<std::fs::File, Status> {
    blocking(move || artifact_dir::create_beneath(&dir, Path::new(&rel)))
        .await?
        .map_err(|e| Status::internal(format!("create artifact: {e}")))
}

async fn write(mut file: std::fs::File, data: Vec<u8>) -> Result<std::fs::File, Status> {
    blocking(move || {
        use std::io::Write;
        file.write_all(&data).map(|()| file)
    })
    .await?
    .map_err(|e| Status::internal(format!("write artifact: {e}")))
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Status::internal(e.to_string()))
}
