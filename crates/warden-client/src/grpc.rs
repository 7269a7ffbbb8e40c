//! The same client over gRPC (`grpc://host:port`): each method answers exactly what its HTTP
//! twin answers, so the CLI does not care which one it talks to.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use warden_api::{
    ArtifactEntry, ArtifactsResponse, ErrorCode, JobStatus, JobView, ListJobsResponse, LogEnd,
    LogEvent, LogsResponse, SubmitJobRequest, SubmitJobResponse,
};
use warden_proto::{MAX_MESSAGE, job_view_from_pb, pb, status_from_pb};

use crate::{ClientError, FollowItem, ListQuery};

#[derive(Clone)]
pub(crate) struct Grpc {
    server: String,
    channel: Channel,
    token: Option<String>,
    timeout: Duration,
}

impl Grpc {
    /// `server` is `grpc://host:port`, or `grpcs://host:port` with the CA that signed its
    /// certificate.
    pub(crate) fn new(
        server: &str,
        timeout: Duration,
        token: Option<String>,
        ca_pem: Option<&[u8]>,
    ) -> Result<Grpc, ClientError> {
        let (scheme, rest) = if let Some(rest) = server.strip_prefix("grpcs://") {
            ("https", rest)
        } else if let Some(rest) = server.strip_prefix("grpc://") {
            ("http", rest)
        } else {
            return Err(ClientError::Protocol(format!(
                "server {server:?} must start with grpc:// or grpcs://"
            )));
        };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{rest}"))
            .map_err(|e| ClientError::Protocol(format!("server {server:?}: {e}")))?
            .tcp_nodelay(true)
            .connect_timeout(timeout);
        if scheme == "https" {
            let ca = ca_pem.ok_or_else(|| {
                ClientError::Protocol(format!(
                    "server {server:?}: grpcs:// needs --ca FILE (the CA that signed the server's \
                     certificate)"
                ))
            })?;
            let tls = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(ca));
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| ClientError::Protocol(format!("server {server:?}: TLS: {e}")))?;
        }
        let channel = endpoint.connect_lazy();
        Ok(Grpc {
            server: server.to_string(),
            channel,
            token,
            timeout,
        })
    }

    fn jobs(&self) -> pb::job_service_client::JobServiceClient<Channel> {
        pb::job_service_client::JobServiceClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
    }

    fn artifacts_client(&self) -> pb::artifact_service_client::ArtifactServiceClient<Channel> {
        pb::artifact_service_client::ArtifactServiceClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
    }

    fn req<T>(&self, msg: T, timed: bool) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        if timed {
            req.set_timeout(self.timeout);
        }
        if let Some(t) = &self.token
            && let Ok(v) = format!("Bearer {t}").parse()
        {
            req.metadata_mut().insert("authorization", v);
        }
        req
    }

    fn error(&self, s: tonic::Status) -> ClientError {
        use tonic::Code;
        let code = s
            .metadata()
            .get("warden-error-code")
            .and_then(|v| v.to_str().ok())
            .and_then(|c| serde_json::from_value::<ErrorCode>(c.into()).ok());
        match (code, s.code()) {
            (Some(code), _) => ClientError::Api {
                status: code.http_status(),
                code,
                message: s.message().to_string(),
            },
            (None, Code::Unavailable | Code::DeadlineExceeded | Code::Unknown) => {
                ClientError::Unreachable {
                    server: self.server.clone(),
                    detail: s.message().to_string(),
                }
            }
            (None, Code::Unauthenticated) => ClientError::Api {
                status: 401,
                code: ErrorCode::InvalidRequest,
                message: s.message().to_string(),
            },
            (None, other) => ClientError::Protocol(format!("{other:?}: {}", s.message())),
        }
    }

    fn view(&self, j: Option<pb::Job>) -> Result<JobView, ClientError> {
        let j = j.ok_or_else(|| ClientError::Protocol("answer without a job".into()))?;
        job_view_from_pb(j).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    pub(crate) async fn submit(
        &self,
        r: &SubmitJobRequest,
    ) -> Result<SubmitJobResponse, ClientError> {
        let msg = pb::SubmitJobRequest {
            job_type: r.job_type.clone(),
            repo_name: r.repo_name.clone(),
            remote_url: r.remote_url.clone(),
            sha: r.sha.clone(),
            r#ref: r.git_ref.clone(),
            params: r.params.clone().into_iter().collect(),
            idempotency_key: r.idempotency_key.clone(),
            command: r.command.clone(),
            callback_url: r.callback_url.clone(),
            tool_bundle: r.tool_bundle.clone(),
            tool_env_var: r.tool_env_var.clone(),
        };
        let resp = self
            .jobs()
            .submit_job(self.req(msg, true))
            .await
            .map_err(|s| self.error(s))?
            .into_inner();
        let job = self.view(resp.job)?;
        Ok(SubmitJobResponse {
            job_id: job.job_id,
            artifact_dir: job.artifact_dir,
            status: job.status,
            idempotent_replay: !resp.created,
        })
    }

    pub(crate) async fn get(&self, id: &str) -> Result<JobView, ClientError> {
        let job = self
            .jobs()
            .get_job(self.req(pb::GetJobRequest { job_id: id.into() }, true))
            .await
            .map_err(|s| self.error(s))?
            .into_inner();
        self.view(Some(job))
    }

    pub(crate) async fn tests(
        &self,
        id: &str,
        status: Option<warden_api::TestStatus>,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<warden_api::TestsResponse, ClientError> {
        let r = self
            .jobs()
            .list_tests(self.req(
                pb::ListTestsRequest {
                    job_id: id.into(),
                    status: status.map_or(0, |s| warden_proto::test_status_to_pb(s) as i32),
                    cursor: cursor.unwrap_or_default().into(),
                    limit,
                },
                true,
            ))
            .await
            .map_err(|s| self.error(s))?
            .into_inner();
        Ok(warden_api::TestsResponse {
            job_id: id.into(),
            counts: r.counts.map(warden_proto::counts_from_pb),
            tests: r
                .tests
                .into_iter()
                .map(warden_proto::test_from_pb)
                .collect::<Result<_, _>>()
                .map_err(|e| ClientError::Protocol(e.0))?,
            next_cursor: r.next_cursor,
        })
    }

    pub(crate) async fn cancel(&self, id: &str) -> Result<JobView, ClientError> {
        let job = self
            .jobs()
            .cancel_job(self.req(pb::CancelJobRequest { job_id: id.into() }, true))
            .await
            .map_err(|s| self.error(s))?
            .into_inner();
        self.view(Some(job))
    }

    pub(crate) async fn list(&self, q: &ListQuery) -> Result<ListJobsResponse, ClientError> {
        let status = match &q.status {
            None => None,
            Some(s) => Some(JobStatus::parse(s).ok_or_else(|| ClientError::Api {
                status: 400,
                code: ErrorCode::InvalidQuery,
                message: format!("status={s:?} is invalid"),
            })?),
        };
        let msg = pb::ListJobsRequest {
            status: status.map(|s| warden_proto::status_to_pb(s) as i32),
            job_type: q.job_type.clone(),
            repo_name: q.repo.clone(),
            before: q.cursor.clone(),
            limit: q.limit.unwrap_or(0),
        };
        let resp = self
            .jobs()
            .list_jobs(self.req(msg, true))
            .await
            .map_err(|s| self.error(s))?
            .into_inner();
        Ok(ListJobsResponse {
            jobs: resp
                .jobs
                .into_iter()
                .map(|j| self.view(Some(j)))
                .collect::<Result<_, _>>()?,
            next_cursor: resp.next_before,
        })
    }

    fn stream_code(stream: &str) -> Result<i32, ClientError> {
        match stream {
            "stdout" => Ok(pb::LogStream::Stdout as i32),
            "stderr" => Ok(pb::LogStream::Stderr as i32),
            other => Err(ClientError::Api {
                status: 400,
                code: ErrorCode::InvalidQuery,
                message: format!("stream={other:?} is invalid; one of: stdout, stderr"),
            }),
        }
    }

    /// Reads a stream from `offset`, following when asked, calling `on_chunk` for each chunk;
    /// returns the final chunk (with the status).
    async fn read(
        &self,
        id: &str,
        stream: &str,
        offset: u64,
        follow: bool,
        mut on_chunk: impl FnMut(&pb::LogChunk),
    ) -> Result<pb::LogChunk, ClientError> {
        let msg = pb::StreamJobLogsRequest {
            job_id: id.into(),
            stream: Self::stream_code(stream)?,
            offset,
            follow,
        };
        let mut chunks = self
            .jobs()
            .stream_job_logs(self.req(msg, !follow))
            .await
            .map_err(|s| self.error(s))?
            .into_inner();
        while let Some(c) = chunks.message().await.map_err(|s| self.error(s))? {
            if c.status != 0 {
                return Ok(c);
            }
            on_chunk(&c);
        }
        Err(ClientError::Protocol(
            "log stream ended before the job did (server stopping?)".into(),
        ))
    }

    pub(crate) async fn logs_raw(
        &self,
        id: &str,
        stream: &str,
        offset: u64,
    ) -> Result<Vec<u8>, ClientError> {
        let mut out = Vec::new();
        self.read(id, stream, offset, false, |c| {
            out.extend_from_slice(&c.data)
        })
        .await?;
        Ok(out)
    }

    pub(crate) async fn logs(
        &self,
        id: &str,
        stream: &str,
        tail: usize,
    ) -> Result<LogsResponse, ClientError> {
        let mut bytes = Vec::new();
        let last = self
            .read(id, stream, 0, false, |c| bytes.extend_from_slice(&c.data))
            .await?;
        let body = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
        let lines: Vec<&[u8]> = if body.is_empty() {
            Vec::new()
        } else {
            body.split(|b| *b == b'\n').collect()
        };
        let skip = lines.len().saturating_sub(tail);
        let offset: u64 = lines[..skip].iter().map(|l| l.len() as u64 + 1).sum();
        Ok(LogsResponse {
            job_id: id.to_string(),
            stream: stream.to_string(),
            lines: lines[skip..]
                .iter()
                .map(|l| String::from_utf8_lossy(l).into_owned())
                .collect(),
            offset,
            next_offset: bytes.len() as u64,
            truncated: last.truncated,
            status: status_from_pb(last.status).map_err(|e| ClientError::Protocol(e.0))?,
        })
    }

    pub(crate) async fn follow(
        &self,
        id: &str,
        stream: &str,
        offset: u64,
        mut on_item: impl FnMut(FollowItem),
    ) -> Result<LogEnd, ClientError> {
        // Text events end on a character boundary; a split character waits for its rest.
        let mut pending: Vec<u8> = Vec::new();
        let mut at = offset;
        let last = self
            .read(id, stream, offset, true, |c| {
                pending.extend_from_slice(&c.data);
                let keep = match std::str::from_utf8(&pending) {
                    Ok(_) => pending.len(),
                    Err(e) if e.error_len().is_none() => e.valid_up_to(),
                    Err(_) => pending.len(),
                };
                let rest = pending.split_off(keep);
                let text = String::from_utf8_lossy(&pending).into_owned();
                let next = at + pending.len() as u64;
                on_item(FollowItem::Log(LogEvent {
                    offset: at,
                    next_offset: next,
                    text,
                }));
                at = next;
                pending = rest;
            })
            .await?;
        let end = LogEnd {
            status: status_from_pb(last.status).map_err(|e| ClientError::Protocol(e.0))?,
            next_offset: last.offset,
            truncated: last.truncated,
        };
        on_item(FollowItem::End(end.clone()));
        Ok(end)
    }

    pub(crate) async fn artifacts(&self, id: &str) -> Result<ArtifactsResponse, ClientError> {
        let resp = self
            .artifacts_client()
            .list_artifacts(self.req(pb::ListArtifactsRequest { job_id: id.into() }, true))
            .await
            .map_err(|s| self.error(s))?
            .into_inner();
        Ok(ArtifactsResponse {
            job_id: id.to_string(),
            artifacts: resp
                .artifacts
                .into_iter()
                .map(|a| ArtifactEntry {
                    path_hex: (!a.path_bytes.is_empty())
                        .then(|| a.path_bytes.iter().map(|b| format!("{b:02x}")).collect()),
                    path: a.path,
                    kind: a.kind,
                    size: a.size,
                })
                .collect(),
            truncated: resp.truncated,
        })
    }

    pub(crate) async fn artifact(&self, id: &str, path: &str) -> Result<Vec<u8>, ClientError> {
        let msg = pb::DownloadArtifactRequest {
            job_id: id.into(),
            path: path.into(),
            path_bytes: Vec::new(),
        };
        let mut pieces = self
            .artifacts_client()
            .download_artifact(self.req(msg, false))
            .await
            .map_err(|s| self.error(s))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(p) = pieces.message().await.map_err(|s| self.error(s))? {
            out.extend_from_slice(&p.data);
        }
        Ok(out)
    }

    pub(crate) fn unsupported(&self, what: &str) -> ClientError {
        ClientError::Protocol(format!(
            "{what} is not part of the gRPC API; use the server's HTTP URL for it"
        ))
    }
}
