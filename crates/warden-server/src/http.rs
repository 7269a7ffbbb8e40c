//! The HTTP/JSON API. Handlers parse and translate; [`JobService`] decides.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::Stream;
use serde::de::DeserializeOwned;
use warden_api::{
    ArtifactsResponse, ErrorCode, JobStatus, JobTypesResponse, ListJobsResponse, LogEnd, LogEvent,
    LogsResponse, SubmitJobRequest, SubmitJobResponse,
};
use warden_core::JobId;
use warden_store::{ListFilter, LogStream};

use crate::error::ApiError;
use crate::service::{DEFAULT_TENANT, FOLLOW_POLL, JobService};

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 1 << 20;

pub type AppState = Arc<JobService>;

/// The whole API as a router, so tests can call it without a socket.
pub fn app(service: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/jobs", post(submit).get(list))
        .route("/jobs/{id}", get(get_job))
        .route("/jobs/{id}/cancel", post(cancel))
        .route("/jobs/{id}/logs", get(logs))
        .route("/jobs/{id}/artifacts", get(artifacts))
        .route("/jobs/{id}/artifacts/{*path}", get(download))
        .route("/job-types", get(job_types))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .with_state(service)
}

/// A bug in a handler answers 500 with the usual error body instead of dropping the connection.
fn panic_response(err: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = err
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| err.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    ApiError::internal("request handler panicked", detail).into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        "no such endpoint; see GET /job-types and the README",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "method not allowed on this endpoint",
    )
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"ok": true}))
}

/// A JSON body whose every failure is a JSON error with the right 4xx.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
            let ct = ct.to_str().unwrap_or("");
            let essence = ct.split(';').next().unwrap_or("").trim();
            if !essence.eq_ignore_ascii_case("application/json") {
                return Err(ApiError::new(
                    ErrorCode::UnsupportedMediaType,
                    format!("content-type {ct:?} is not supported; send application/json"),
                ));
            }
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    format!("request body is larger than {MAX_BODY_BYTES} bytes"),
                )
            } else {
                ApiError::new(
                    ErrorCode::MalformedJson,
                    format!("could not read body: {rejection}"),
                )
            }
        })?;
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| {
            use serde_json::error::Category;
            match e.classify() {
                Category::Syntax | Category::Eof | Category::Io => {
                    ApiError::new(ErrorCode::MalformedJson, format!("malformed JSON: {e}"))
                }
                Category::Data if e.to_string().starts_with("unknown field") => {
                    ApiError::new(ErrorCode::UnknownField, e.to_string())
                }
                Category::Data => ApiError::new(ErrorCode::InvalidRequest, e.to_string()),
            }
        })
    }
}

fn parse_query(raw: Option<String>, allowed: &[&str]) -> Result<HashMap<String, String>, ApiError> {
    let mut out = HashMap::new();
    for (k, v) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        if !allowed.contains(&k.as_ref()) {
            return Err(ApiError::new(
                ErrorCode::InvalidQuery,
                format!(
                    "unknown query parameter {k:?}; allowed: {}",
                    allowed.join(", ")
                ),
            ));
        }
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(ApiError::new(
                ErrorCode::InvalidQuery,
                format!("query parameter {k:?} given twice"),
            ));
        }
    }
    Ok(out)
}

fn query_num<T>(
    q: &HashMap<String, String>,
    name: &str,
    range: std::ops::RangeInclusive<T>,
) -> Result<Option<T>, ApiError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    let Some(raw) = q.get(name) else {
        return Ok(None);
    };
    match raw.parse::<T>() {
        Ok(v) if range.contains(&v) => Ok(Some(v)),
        _ => Err(ApiError::new(
            ErrorCode::InvalidQuery,
            format!(
                "{name}={raw:?} is invalid: expected a whole number from {} to {}",
                range.start(),
                range.end()
            ),
        )),
    }
}

fn query_bool(q: &HashMap<String, String>, name: &str) -> Result<bool, ApiError> {
    match q.get(name).map(String::as_str) {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") | Some("") => Ok(true),
        Some(other) => Err(ApiError::new(
            ErrorCode::InvalidQuery,
            format!("{name}={other:?} is invalid: expected true or false"),
        )),
    }
}

async fn submit(
    State(svc): State<AppState>,
    JsonBody(req): JsonBody<SubmitJobRequest>,
) -> Result<Response, ApiError> {
    let (job, created) = svc.submit(req).await?;
    let body = SubmitJobResponse {
        job_id: job.id.to_string(),
        artifact_dir: svc.artifact_dir(job.id),
        status: job.status,
        idempotent_replay: !created,
    };
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(body)).into_response())
}

async fn get_job(
    State(svc): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = JobService::parse_id(&id)?;
    let job = svc.get(id).await?;
    Ok(Json(svc.view(&job)).into_response())
}

async fn list(State(svc): State<AppState>, RawQuery(raw): RawQuery) -> Result<Response, ApiError> {
    let q = parse_query(raw, &["status", "job_type", "limit", "cursor"])?;
    let status = match q.get("status") {
        None => None,
        Some(s) => Some(JobStatus::parse(s).ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidQuery,
                format!(
                    "status={s:?} is invalid; one of: {}",
                    JobStatus::ALL.map(|s| s.as_str()).join(", ")
                ),
            )
        })?),
    };
    let limit = query_num(&q, "limit", 1u32..=500)?.unwrap_or(50);
    let before = match q.get("cursor") {
        None => None,
        Some(c) => Some(c.parse::<JobId>().map_err(|_| {
            ApiError::new(
                ErrorCode::InvalidQuery,
                format!("cursor={c:?} is not a cursor from a previous page"),
            )
        })?),
    };
    let filter = ListFilter {
        tenant: Some(DEFAULT_TENANT.to_string()),
        status,
        job_type: q.get("job_type").cloned(),
        before,
        limit,
    };
    let jobs = svc.list(filter).await?;
    let next_cursor = if jobs.len() == limit as usize {
        jobs.last().map(|j| j.id.to_string())
    } else {
        None
    };
    let body = ListJobsResponse {
        jobs: jobs.iter().map(|j| svc.view(j)).collect(),
        next_cursor,
    };
    Ok(Json(body).into_response())
}

async fn cancel(State(svc): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = JobService::parse_id(&id)?;
    let job = svc.cancel(id).await?;
    Ok((StatusCode::ACCEPTED, Json(svc.view(&job))).into_response())
}

async fn job_types(State(svc): State<AppState>) -> Json<JobTypesResponse> {
    Json(JobTypesResponse {
        job_types: svc.job_types(),
    })
}

async fn logs(
    State(svc): State<AppState>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = JobService::parse_id(&id)?;
    let q = parse_query(
        raw,
        &["stream", "tail", "follow", "offset", "format", "limit"],
    )?;
    let stream = match q.get("stream").map(String::as_str) {
        None => LogStream::Stdout,
        Some(s) => LogStream::parse(s).ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidQuery,
                format!("stream={s:?} is invalid: stdout or stderr"),
            )
        })?,
    };
    let tail = query_num(&q, "tail", 0usize..=100_000)?;
    let follow = query_bool(&q, "follow")?;
    let mut offset = query_num(&q, "offset", 0u64..=u64::MAX)?;
    let format = q.get("format").map(String::as_str).unwrap_or("json");
    if !matches!(format, "json" | "raw") {
        return Err(ApiError::new(
            ErrorCode::InvalidQuery,
            format!("format={format:?} is invalid: json or raw"),
        ));
    }
    let limit = query_num(&q, "limit", 1usize..=16 << 20)?.unwrap_or(16 << 20);
    let job = svc.get(id).await?;

    if follow {
        if offset.is_none()
            && let Some(last) = headers.get("last-event-id").and_then(|v| v.to_str().ok())
        {
            offset = Some(last.parse().map_err(|_| {
                ApiError::new(
                    ErrorCode::InvalidQuery,
                    "Last-Event-ID must be a byte offset",
                )
            })?);
        }
        let start = match (offset, tail) {
            (Some(o), _) => o,
            (None, Some(t)) => svc.tail(&job, stream, t).await?.1,
            (None, None) => 0,
        };
        let events = follow_stream(svc.clone(), id, stream, start);
        return Ok(Sse::new(events)
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
            .into_response());
    }

    if format == "raw" {
        let from = offset.unwrap_or(0);
        let bytes = svc
            .store
            .read_log(id, stream, from, limit)
            .await
            .map_err(ApiError::from)?;
        let next = from + bytes.len() as u64;
        let mut resp = Response::new(Body::from(bytes));
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        h.insert("x-warden-next-offset", HeaderValue::from(next));
        h.insert(
            "x-warden-stream-length",
            HeaderValue::from(job.log_len(stream)),
        );
        h.insert(
            "x-warden-status",
            HeaderValue::from_static(job.status.as_str()),
        );
        return Ok(resp);
    }

    let (lines, start) = svc.tail(&job, stream, tail.unwrap_or(200)).await?;
    Ok(Json(LogsResponse {
        job_id: id.to_string(),
        stream: stream.as_str().to_string(),
        lines,
        offset: start,
        next_offset: job.log_len(stream),
        truncated: job.log_truncated,
        status: job.status,
    })
    .into_response())
}

struct Follow {
    svc: AppState,
    id: JobId,
    stream: LogStream,
    /// Bytes read from the store so far.
    offset: u64,
    /// The tail of an incomplete UTF-8 sequence, held back until its next bytes arrive.
    pending: Vec<u8>,
    rx: warden_worker::JobEvents,
    done: bool,
}

/// Server-sent events: `log` events (id = next offset, for `Last-Event-ID` resume) until the job
/// ends, then one `end` event.
fn follow_stream(
    svc: AppState,
    id: JobId,
    stream: LogStream,
    offset: u64,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let rx = svc.events.subscribe();
    let state = Follow {
        svc,
        id,
        stream,
        offset,
        pending: Vec::new(),
        rx,
        done: false,
    };
    futures::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            let chunk = match st
                .svc
                .store
                .read_log(st.id, st.stream, st.offset, 64 * 1024)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    st.done = true;
                    tracing::error!(job = %st.id, error = %e, "log follow read failed");
                    return Some((
                        Ok(Event::default().event("error").data("log read failed")),
                        st,
                    ));
                }
            };
            if !chunk.is_empty() {
                st.offset += chunk.len() as u64;
                let mut data = std::mem::take(&mut st.pending);
                data.extend_from_slice(&chunk);
                let keep = match std::str::from_utf8(&data) {
                    Ok(_) => data.len(),
                    Err(e) if e.error_len().is_none() => e.valid_up_to(),
                    Err(_) => data.len(),
                };
                st.pending = data.split_off(keep);
                let next = st.offset - st.pending.len() as u64;
                let ev = LogEvent {
                    offset: next - data.len() as u64,
                    next_offset: next,
                    text: String::from_utf8_lossy(&data).into_owned(),
                };
                let event = Event::default().event("log").id(next.to_string());
                let event = event
                    .json_data(ev)
                    .unwrap_or_else(|_| Event::default().event("log"));
                return Some((Ok(event), st));
            }
            let job = match st.svc.store.get(st.id).await {
                Ok(j) => j,
                Err(_) => {
                    st.done = true;
                    return Some((Ok(Event::default().event("error").data("job vanished")), st));
                }
            };
            if job.status.is_terminal() && st.offset >= job.log_len(st.stream) {
                st.done = true;
                let end = LogEnd {
                    status: job.status,
                    next_offset: st.offset,
                    truncated: job.log_truncated,
                };
                let event = Event::default()
                    .event("end")
                    .json_data(end)
                    .unwrap_or_default();
                return Some((Ok(event), st));
            }
            tokio::select! {
                _ = st.rx.changed(st.id) => {}
                // Another replica may be writing: look again now and then.
                _ = tokio::time::sleep(FOLLOW_POLL) => {}
                _ = st.svc.shutdown.cancelled() => return None,
            }
        }
    })
}

async fn artifacts(
    State(svc): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = JobService::parse_id(&id)?;
    let artifacts = svc.artifacts(id).await?;
    Ok(Json(ArtifactsResponse {
        job_id: id.to_string(),
        artifacts,
    })
    .into_response())
}

async fn download(
    State(svc): State<AppState>,
    Path((id, path)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let id = JobService::parse_id(&id)?;
    let (file, len) = svc.open_artifact(id, &path).await?;
    let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file));
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    Ok(resp)
}
