//! A typed client for warden's API: HTTP/JSON (`http://`, `https://`) or gRPC (`grpc://`),
//! with the same methods and answers either way.

mod admin;
mod grpc;

pub use admin::AuditQuery;

use std::time::Duration;

use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use warden_api::{
    ArtifactsResponse, ErrorBody, ErrorCode, JobTypesResponse, JobView, ListJobsResponse, LogEnd,
    LogEvent, LogsResponse, SubmitJobRequest, SubmitJobResponse,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error body.
    #[error("{message} ({code:?}, HTTP {status})")]
    Api {
        status: u16,
        code: ErrorCode,
        message: String,
    },
    #[error("cannot reach warden at {server}: {detail}")]
    Unreachable { server: String, detail: String },
    #[error("unexpected answer from warden: {0}")]
    Protocol(String),
}

impl ClientError {
    /// True when the request itself was at fault (a 4xx), not the server or the network.
    pub fn is_caller_error(&self) -> bool {
        matches!(self, ClientError::Api { status, .. } if (400..500).contains(status))
    }

    /// The server's error code, when it answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }
}

#[derive(Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
    timeout: Duration,
    grpc: Option<grpc::Grpc>,
}

/// Filters for [`Client::list`].
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Another tenant's jobs (admin tokens only).
    pub tenant: Option<String>,
    pub status: Option<String>,
    pub job_type: Option<String>,
    /// Only jobs on this repository (`repo_name`).
    pub repo: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// One item of a followed log.
#[derive(Debug, Clone, PartialEq)]
pub enum FollowItem {
    Log(LogEvent),
    End(LogEnd),
}

impl Client {
    /// `server` like `http://127.0.0.1:8080`; `timeout` bounds each request (not follows).
    pub fn new(
        server: &str,
        timeout: Duration,
        token: Option<String>,
    ) -> Result<Client, ClientError> {
        Client::with_ca(server, timeout, token, None)
    }

    /// Like [`new`](Self::new), trusting only the CA certificate(s) of `ca_pem` for `https://`
    /// and `grpcs://` (a `grpcs://` server needs one; `https://` without it trusts the
    /// system's roots).
    pub fn with_ca(
        server: &str,
        timeout: Duration,
        token: Option<String>,
        ca_pem: Option<&[u8]>,
    ) -> Result<Client, ClientError> {
        // reqwest's rustls takes the process's default provider; tonic brings its own.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(timeout)
            .tcp_nodelay(true);
        let https = server.starts_with("https://");
        match ca_pem {
            // Only this CA: the operator said which one signs the server's certificate.
            Some(pem) => {
                let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
                    ClientError::Protocol(format!("--ca: not a PEM certificate: {e}"))
                })?;
                builder = builder.tls_certs_only(certs);
            }
            // Plain http never verifies a certificate: no need for the system's roots (a
            // minimal host may have none).
            None if !https => builder = builder.tls_certs_only([]),
            // https without --ca: the system's roots.
            None => {}
        }
        let http = builder.build().map_err(|e| {
            ClientError::Protocol(if https && ca_pem.is_none() {
                format!(
                    "cannot use the system's CA certificates for {server} ({e}); give the CA \
                     that signed the server's certificate with --ca FILE"
                )
            } else {
                e.to_string()
            })
        })?;
        let base = server.trim_end_matches('/').to_string();
        let grpc = if base.starts_with("grpc://") || base.starts_with("grpcs://") {
            Some(grpc::Grpc::new(&base, timeout, token.clone(), ca_pem)?)
        } else if base.starts_with("http://") || base.starts_with("https://") {
            None
        } else {
            return Err(ClientError::Protocol(format!(
                "server {server:?} must start with http://, https://, grpc:// or grpcs://"
            )));
        };
        Ok(Client {
            base,
            http,
            token,
            timeout,
            grpc,
        })
    }

    pub fn server(&self) -> &str {
        &self.base
    }

    pub(crate) fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.request_untimed(method, path).timeout(self.timeout)
    }

    /// For streams that last as long as the job does.
    fn request_untimed(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut rb = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(t);
        }
        rb
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let resp = rb.send().await.map_err(|e| ClientError::Unreachable {
            server: self.base.clone(),
            detail: root_cause(&e),
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        Err(match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(b) => ClientError::Api {
                status: status.as_u16(),
                code: b.error.code,
                message: b.error.message,
            },
            Err(_) => ClientError::Protocol(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&body)
                    .chars()
                    .take(200)
                    .collect::<String>()
            )),
        })
    }

    pub(crate) async fn json<T: DeserializeOwned>(
        &self,
        rb: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let bytes = self.bytes(rb).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    async fn bytes(&self, rb: reqwest::RequestBuilder) -> Result<Vec<u8>, ClientError> {
        let resp = self.send(rb).await?;
        let body = resp
            .bytes()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok(body.to_vec())
    }

    pub async fn healthz(&self) -> Result<serde_json::Value, ClientError> {
        if let Some(g) = &self.grpc {
            return Err(g.unsupported("/healthz"));
        }
        self.json(self.request(Method::GET, "/healthz")).await
    }

    pub async fn submit(&self, req: &SubmitJobRequest) -> Result<SubmitJobResponse, ClientError> {
        if let Some(g) = &self.grpc {
            return g.submit(req).await;
        }
        self.json(self.request(Method::POST, "/jobs").json(req))
            .await
    }

    pub async fn get(&self, id: &str) -> Result<JobView, ClientError> {
        if let Some(g) = &self.grpc {
            return g.get(id).await;
        }
        self.json(self.request(Method::GET, &format!("/jobs/{}", enc(id))))
            .await
    }

    pub async fn list(&self, q: &ListQuery) -> Result<ListJobsResponse, ClientError> {
        if let Some(g) = &self.grpc {
            return g.list(q).await;
        }
        let mut params: Vec<(&str, String)> = Vec::new();
        if let Some(t) = &q.tenant {
            params.push(("tenant", t.clone()));
        }
        if let Some(s) = &q.status {
            params.push(("status", s.clone()));
        }
        if let Some(t) = &q.job_type {
            params.push(("job_type", t.clone()));
        }
        if let Some(r) = &q.repo {
            params.push(("repo", r.clone()));
        }
        if let Some(l) = q.limit {
            params.push(("limit", l.to_string()));
        }
        if let Some(c) = &q.cursor {
            params.push(("cursor", c.clone()));
        }
        self.json(self.request(Method::GET, "/jobs").query(&params))
            .await
    }

    /// One page of a job's test results, failures first.
    pub async fn tests(
        &self,
        id: &str,
        status: Option<warden_api::TestStatus>,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<warden_api::TestsResponse, ClientError> {
        if let Some(g) = &self.grpc {
            return g.tests(id, status, cursor, limit).await;
        }
        let mut q = vec![("limit", limit.to_string())];
        if let Some(s) = status {
            q.push(("status", s.as_str().to_string()));
        }
        if let Some(c) = cursor {
            q.push(("cursor", c.to_string()));
        }
        let rb = self
            .request(Method::GET, &format!("/jobs/{}/tests", enc(id)))
            .query(&q);
        self.json(rb).await
    }

    /// A job's webhook deliveries, with their attempts (HTTP only).
    pub async fn webhooks(&self, id: &str) -> Result<warden_api::WebhooksResponse, ClientError> {
        if let Some(g) = &self.grpc {
            return Err(g.unsupported("webhook deliveries"));
        }
        self.json(self.request(Method::GET, &format!("/jobs/{}/webhooks", enc(id))))
            .await
    }

    pub async fn cancel(&self, id: &str) -> Result<JobView, ClientError> {
        if let Some(g) = &self.grpc {
            return g.cancel(id).await;
        }
        self.json(self.request(Method::POST, &format!("/jobs/{}/cancel", enc(id))))
            .await
    }

    pub async fn logs(
        &self,
        id: &str,
        stream: &str,
        tail: usize,
    ) -> Result<LogsResponse, ClientError> {
        if let Some(g) = &self.grpc {
            return g.logs(id, stream, tail).await;
        }
        let rb = self
            .request(Method::GET, &format!("/jobs/{}/logs", enc(id)))
            .query(&[("stream", stream.to_string()), ("tail", tail.to_string())]);
        self.json(rb).await
    }

    /// Exact bytes of a stream from `offset`.
    pub async fn logs_raw(
        &self,
        id: &str,
        stream: &str,
        offset: u64,
    ) -> Result<Vec<u8>, ClientError> {
        if let Some(g) = &self.grpc {
            return g.logs_raw(id, stream, offset).await;
        }
        let rb = self
            .request(Method::GET, &format!("/jobs/{}/logs", enc(id)))
            .query(&[
                ("stream", stream.to_string()),
                ("format", "raw".to_string()),
                ("offset", offset.to_string()),
            ]);
        self.bytes(rb).await
    }

    /// Up to `limit` bytes of a stream from `offset`.
    pub async fn logs_range(
        &self,
        id: &str,
        stream: &str,
        offset: u64,
        limit: usize,
    ) -> Result<Vec<u8>, ClientError> {
        if let Some(g) = &self.grpc {
            let mut bytes = g.logs_raw(id, stream, offset).await?;
            bytes.truncate(limit);
            return Ok(bytes);
        }
        let rb = self
            .request(Method::GET, &format!("/jobs/{}/logs", enc(id)))
            .query(&[
                ("stream", stream.to_string()),
                ("format", "raw".to_string()),
                ("offset", offset.to_string()),
                ("limit", limit.to_string()),
            ]);
        self.bytes(rb).await
    }

    /// Follows a stream live, calling `on_item` for each event, until the job ends.
    /// Starts at `offset`, or at the last `tail` lines when `offset` is `None`.
    pub async fn follow(
        &self,
        id: &str,
        stream: &str,
        offset: Option<u64>,
        tail: Option<usize>,
        mut on_item: impl FnMut(FollowItem),
    ) -> Result<LogEnd, ClientError> {
        if let Some(g) = &self.grpc {
            return match (offset, tail) {
                (Some(o), _) => g.follow(id, stream, o, on_item).await,
                (None, Some(t)) => {
                    let start = g.logs(id, stream, t).await?.offset;
                    g.follow(id, stream, start, on_item).await
                }
                (None, None) => g.follow(id, stream, 0, on_item).await,
            };
        }
        let mut query = vec![
            ("stream", stream.to_string()),
            ("follow", "true".to_string()),
        ];
        if let Some(o) = offset {
            query.push(("offset", o.to_string()));
        } else if let Some(t) = tail {
            query.push(("tail", t.to_string()));
        }
        let rb = self
            .request_untimed(Method::GET, &format!("/jobs/{}/logs", enc(id)))
            .query(&query);
        let resp = self.send(rb).await?;
        let mut body = resp.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        let (mut event, mut data) = (String::new(), String::new());
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| ClientError::Unreachable {
                server: self.base.clone(),
                detail: root_cause(&e),
            })?;
            buf.extend_from_slice(&chunk);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                let line = String::from_utf8_lossy(&line[..line.len() - 1])
                    .trim_end_matches('\r')
                    .to_string();
                if line.is_empty() {
                    match event.as_str() {
                        "log" => {
                            let ev: LogEvent = serde_json::from_str(&data)
                                .map_err(|e| ClientError::Protocol(e.to_string()))?;
                            on_item(FollowItem::Log(ev));
                        }
                        "end" => {
                            let end: LogEnd = serde_json::from_str(&data)
                                .map_err(|e| ClientError::Protocol(e.to_string()))?;
                            on_item(FollowItem::End(end.clone()));
                            return Ok(end);
                        }
                        "error" => {
                            return Err(ClientError::Protocol(format!(
                                "log stream failed: {data}"
                            )));
                        }
                        _ => {}
                    }
                    event.clear();
                    data.clear();
                } else if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(v.strip_prefix(' ').unwrap_or(v));
                }
            }
        }
        Err(ClientError::Protocol(
            "log stream ended before the job did (server stopping?)".into(),
        ))
    }

    pub async fn artifacts(&self, id: &str) -> Result<ArtifactsResponse, ClientError> {
        if let Some(g) = &self.grpc {
            return g.artifacts(id).await;
        }
        self.json(self.request(Method::GET, &format!("/jobs/{}/artifacts", enc(id))))
            .await
    }

    pub async fn artifact(&self, id: &str, path: &str) -> Result<Vec<u8>, ClientError> {
        if let Some(g) = &self.grpc {
            return g.artifact(id, path).await;
        }
        let path = artifact_url_path(path)?;
        let rb = self.request_untimed(Method::GET, &format!("/jobs/{}/artifacts/{path}", enc(id)));
        self.bytes(rb).await
    }

    /// The first `limit` bytes of one artifact and its whole size; the rest is not fetched.
    pub async fn artifact_head(
        &self,
        id: &str,
        path: &str,
        limit: usize,
    ) -> Result<(Vec<u8>, u64), ClientError> {
        if let Some(g) = &self.grpc {
            let mut bytes = g.artifact(id, path).await?;
            let size = bytes.len() as u64;
            bytes.truncate(limit);
            return Ok((bytes, size));
        }
        let path = artifact_url_path(path)?;
        let rb = self.request(Method::GET, &format!("/jobs/{}/artifacts/{path}", enc(id)));
        let resp = self.send(rb).await?;
        let size = resp.content_length();
        let mut body = resp.bytes_stream();
        let mut head = Vec::new();
        while head.len() < limit {
            match body.next().await {
                Some(Ok(chunk)) => {
                    let take = chunk.len().min(limit - head.len());
                    head.extend_from_slice(&chunk[..take]);
                }
                Some(Err(e)) => return Err(ClientError::Protocol(root_cause(&e))),
                None => break,
            }
        }
        let size = size.unwrap_or(head.len() as u64);
        Ok((head, size))
    }

    pub async fn job_types(&self) -> Result<JobTypesResponse, ClientError> {
        if let Some(g) = &self.grpc {
            return Err(g.unsupported("the job type list"));
        }
        self.json(self.request(Method::GET, "/job-types")).await
    }

    /// Polls until the job is terminal, calling `tick` with each view.
    pub async fn wait(
        &self,
        id: &str,
        mut tick: impl FnMut(&JobView),
    ) -> Result<JobView, ClientError> {
        let mut delay = Duration::from_millis(20);
        loop {
            let job = self.get(id).await?;
            tick(&job);
            if job.status.is_terminal() {
                return Ok(job);
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    }
}

pub(crate) fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An artifact path for a URL, as one segment (its `/` percent-encoded: the server decodes the
/// whole path), so a `..` in it reaches the server as written — which refuses it — instead of
/// being resolved away by URL normalization into another file or endpoint. A path that is
/// only `.` or `..` cannot be sent unresolved at all: refused here, as the server would.
fn artifact_url_path(path: &str) -> Result<String, ClientError> {
    if matches!(path, "." | "..") {
        return Err(ClientError::Api {
            status: 400,
            code: ErrorCode::InvalidPath,
            message: format!("artifact path {path:?} is not a file in the artifact directory"),
        });
    }
    Ok(enc(path))
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

impl From<StatusCode> for ClientError {
    fn from(s: StatusCode) -> ClientError {
        ClientError::Protocol(format!("HTTP {s}"))
    }
}
