//! Sending a job's artifacts to the control plane before its completion.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::transport::Channel;
use warden_proto::pb::worker_service_client::WorkerServiceClient;
use warden_proto::{MAX_CHUNK, MAX_MESSAGE, lease_to_pb, pb};
use warden_store::Lease;

use super::link::Inner;
use crate::artifact_dir;

/// Why an artifact upload failed, by the code the control plane sent (never by its text).
#[derive(Debug, thiserror::Error)]
pub(super) enum UploadError {
    /// The job's lease is no longer this worker's: the upload is refused for good.
    #[error("lease lost")]
    LeaseLost,
    #[error("{0}")]
    Failed(String),
}

impl UploadError {
    fn from_status(s: &tonic::Status) -> UploadError {
        let code = s
            .metadata()
            .get(warden_proto::ERROR_CODE_KEY)
            .and_then(|v| v.to_str().ok());
        match code {
            Some(c) if c == warden_api::ErrorCode::LeaseLost.as_str() => UploadError::LeaseLost,
            _ => UploadError::Failed(s.message().to_string()),
        }
    }
}

/// Sends the job's artifact directory, file by file, under its lease. Only regular files
/// are sent, each opened beneath the directory without following a link.
pub(super) async fn upload_artifacts(
    inner: &Inner,
    lease: &Lease,
    deadline: Instant,
) -> Result<(), UploadError> {
    let dir = inner.data.artifacts(lease.job_id);
    let files = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || upload_order(artifact_dir::regular_files(&dir)))
            .await
            .map_err(|e| UploadError::Failed(e.to_string()))?
    };
    if files.is_empty() {
        return Ok(());
    }
    loop {
        let conn = inner.conn.borrow().clone();
        let result = match conn {
            Some(conn) => upload_once(inner, conn.channel, lease, &dir, &files).await,
            None => Err(UploadError::Failed("not connected".into())),
        };
        match result {
            Ok(()) => return Ok(()),
            Err(UploadError::LeaseLost) => return Err(UploadError::LeaseLost),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

async fn upload_once(
    inner: &Inner,
    channel: Channel,
    lease: &Lease,
    dir: &Path,
    files: &[PathBuf],
) -> Result<(), UploadError> {
    let (tx, rx) = mpsc::channel::<pb::ArtifactUpload>(4);
    let (dir, files, pb_lease) = (dir.to_path_buf(), files.to_vec(), lease_to_pb(lease));
    let reader = tokio::task::spawn_blocking(move || -> Result<(), String> {
        use std::io::Read;
        for rel in files {
            let (mut f, _) = artifact_dir::open_beneath(&dir, &rel).map_err(|e| e.to_string())?;
            let mut offset = 0u64;
            let mut buf = vec![0u8; MAX_CHUNK];
            loop {
                let n = f.read(&mut buf).map_err(|e| e.to_string())?;
                if n == 0 && offset > 0 {
                    break;
                }
                let msg = pb::ArtifactUpload {
                    lease: Some(pb_lease.clone()),
                    path: rel.to_string_lossy().into_owned(),
                    offset,
                    data: buf[..n].to_vec(),
                };
                offset += n as u64;
                if tx.blocking_send(msg).is_err() {
                    return Err("upload stream closed".into());
                }
                if n == 0 {
                    break;
                }
            }
        }
        Ok(())
    });
    let mut client = WorkerServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    inner.authorize(&mut req);
    let sent = client.upload_artifacts(req).await;
    let read = reader
        .await
        .map_err(|e| UploadError::Failed(e.to_string()))?;
    match sent {
        Ok(_) => read.map_err(UploadError::Failed),
        Err(s) => Err(UploadError::from_status(&s)),
    }
}

/// `artifact.json` last: the control plane holds the record only once everything it
/// describes has arrived.
fn upload_order(mut files: Vec<PathBuf>) -> Vec<PathBuf> {
    files.sort_by_key(|p| (p == Path::new("artifact.json"), p.clone()));
    files
}
