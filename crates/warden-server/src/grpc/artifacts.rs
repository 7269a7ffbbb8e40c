//! `warden.v1.ArtifactService`: listing and downloads, by the same rules as over HTTP.

use std::io::Read;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Request, Response, Status};
use warden_proto::{MAX_CHUNK, pb};

use super::{caller, status};
use crate::service::{ArtifactBody, JobService};

pub(crate) struct Artifacts {
    svc: Arc<JobService>,
}

impl Artifacts {
    pub(crate) fn new(svc: Arc<JobService>) -> Artifacts {
        Artifacts { svc }
    }
}

#[tonic::async_trait]
impl pb::artifact_service_server::ArtifactService for Artifacts {
    async fn list_artifacts(
        &self,
        req: Request<pb::ListArtifactsRequest>,
    ) -> Result<Response<pb::ListArtifactsResponse>, Status> {
        let caller = caller(&self.svc, &req, "grpc ListArtifacts").await?;
        let id = JobService::parse_id(&req.get_ref().job_id).map_err(status)?;
        let (list, truncated) = self.svc.artifacts(&caller, id).await.map_err(status)?;
        Ok(Response::new(pb::ListArtifactsResponse {
            artifacts: list
                .into_iter()
                .map(|a| pb::ArtifactEntry {
                    path_bytes: a.path_hex.as_deref().map(unhex).unwrap_or_default(),
                    path: a.path,
                    kind: a.kind,
                    size: a.size,
                })
                .collect(),
            truncated,
        }))
    }

    type DownloadArtifactStream =
        Pin<Box<dyn Stream<Item = Result<pb::ArtifactData, Status>> + Send>>;

    async fn download_artifact(
        &self,
        req: Request<pb::DownloadArtifactRequest>,
    ) -> Result<Response<Self::DownloadArtifactStream>, Status> {
        let caller = caller(&self.svc, &req, "grpc DownloadArtifact").await?;
        let r = req.into_inner();
        let id = JobService::parse_id(&r.job_id).map_err(status)?;
        let path = if r.path_bytes.is_empty() {
            r.path.into_bytes()
        } else {
            r.path_bytes
        };
        let body = self
            .svc
            .open_artifact(&caller, id, &path)
            .await
            .map_err(status)?;
        let size = body.len();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        match body {
            ArtifactBody::File(mut file, _) => {
                tokio::task::spawn_blocking(move || {
                    let mut offset = 0u64;
                    let mut buf = vec![0u8; MAX_CHUNK];
                    loop {
                        let n = match file.read(&mut buf) {
                            Ok(n) => n,
                            Err(e) => {
                                let _ =
                                    tx.blocking_send(Err(Status::internal(format!("read: {e}"))));
                                return;
                            }
                        };
                        // The first message always goes out, so an empty file still says its
                        // size.
                        if n == 0 && offset > 0 {
                            return;
                        }
                        let msg = pb::ArtifactData {
                            offset,
                            data: buf[..n].to_vec(),
                            size: if offset == 0 { size } else { 0 },
                        };
                        offset += n as u64;
                        if tx.blocking_send(Ok(msg)).is_err() || n == 0 {
                            return;
                        }
                    }
                });
            }
            ArtifactBody::Stream(mut stream, _) => {
                tokio::spawn(async move {
                    use futures::StreamExt;
                    let mut offset = 0u64;
                    let first = |offset: u64| if offset == 0 { size } else { 0 };
                    while let Some(piece) = stream.next().await {
                        let mut piece = match piece {
                            Ok(p) => p,
                            Err(e) => {
                                let _ = tx
                                    .send(Err(Status::unavailable(format!("read: {e}"))))
                                    .await;
                                return;
                            }
                        };
                        while !piece.is_empty() {
                            let data = piece.split_to(piece.len().min(MAX_CHUNK));
                            let msg = pb::ArtifactData {
                                offset,
                                size: first(offset),
                                data: data.to_vec(),
                            };
                            offset += data.len() as u64;
                            if tx.send(Ok(msg)).await.is_err() {
                                return;
                            }
                        }
                    }
                    if offset == 0 {
                        let empty = pb::ArtifactData {
                            offset: 0,
                            size: 0,
                            data: Vec::new(),
                        };
                        let _ = tx.send(Ok(empty)).await;
                    }
                });
            }
        }
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// The bytes of a hex string the service wrote (always well-formed).
fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
        .collect()
}
