//! `GET /jobs/{id}/logs`: the last lines as JSON, exact bytes, or a live follow over
//! server-sent events.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use warden_api::{ErrorBody, ErrorCode, LogEnd, LogEvent, LogsResponse};
use warden_store::LogStream;

use super::AppState;
use super::query::{parse_query, query_bool, query_num};
use crate::service::{JobService, LogItem, ServiceError};

/// Bytes per SSE event at most: a block of the log cache, so that followers in step share
/// each event.
const SSE_CHUNK: usize = warden_worker::log_cache::BLOCK;

/// A job's log: the last lines as JSON (default), exact bytes from an offset (`format=raw`), or
/// a live follow over server-sent events (`follow=true`: `log` events whose id is the next
/// offset, for `Last-Event-ID` resume, then one `end` event).
#[utoipa::path(get, path = "/jobs/{id}/logs", tag = "jobs",
    params(
        ("id" = uuid::Uuid, Path, description = "The job id (a UUIDv7, as `POST /jobs` returned it)"),
        ("stream" = Option<super::openapi::StreamParam>, Query, description = "`stdout` (default) or `stderr`"),
        ("tail" = Option<u32>, Query, description = "Lines from the end (JSON: default 200; follow: start this many lines back)", maximum = 100000),
        ("follow" = Option<bool>, Query, description = "Stream as server-sent events until the job ends"),
        ("offset" = Option<u64>, Query, description = "Byte offset to start at (`format=raw`, `follow`)"),
        ("format" = Option<super::openapi::FormatParam>, Query, description = "`json` (default) or `raw`"),
        ("limit" = Option<u32>, Query, description = "`format=raw`: at most this many bytes (default and maximum 16 MiB)", minimum = 1, maximum = 16777216),
        ("Last-Event-ID" = Option<u64>, Header, description = "`follow`: resume after this offset (the id of the last `log` event received)"),
    ),
    responses(
        (status = 200, description = "The log", content(
            (LogsResponse = "application/json"),
            (String = "application/octet-stream"),
            (super::openapi::LogStreamEvent = "text/event-stream"),
        )),
        (status = 400, description = "Not a job id, or a bad query parameter (`invalid_job_id`, `invalid_query`)", body = ErrorBody),
        (status = 404, description = "No such job (`job_not_found`)", body = ErrorBody),
    ))]
pub(super) async fn logs(
    State(svc): State<AppState>,
    axum::extract::Extension(caller): axum::extract::Extension<crate::auth::Caller>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ServiceError> {
    let id = JobService::parse_id(&id)?;
    let q = parse_query(
        raw,
        &["stream", "tail", "follow", "offset", "format", "limit"],
    )?;
    let stream = match q.get("stream").map(String::as_str) {
        None => LogStream::Stdout,
        Some(s) => LogStream::parse(s).ok_or_else(|| {
            ServiceError::new(
                ErrorCode::InvalidQuery,
                format!("stream={s:?} is invalid: stdout or stderr"),
            )
        })?,
    };
    let tail = query_num(&q, "tail", 0usize..=100_000)?;
    let follow = query_bool(&q, "follow")?;
    let mut offset = query_num(&q, "offset", 0u64..=i64::MAX as u64)?;
    let format = q.get("format").map(String::as_str).unwrap_or("json");
    if !matches!(format, "json" | "raw") {
        return Err(ServiceError::new(
            ErrorCode::InvalidQuery,
            format!("format={format:?} is invalid: json or raw"),
        ));
    }
    let limit = query_num(&q, "limit", 1usize..=16 << 20)?.unwrap_or(16 << 20);
    // A resumed follow's position; checked whenever it is sent, used when no offset is given.
    let last_event = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .filter(|o| *o <= i64::MAX as u64)
                .ok_or_else(|| {
                    ServiceError::new(
                        ErrorCode::InvalidQuery,
                        "Last-Event-ID must be a byte offset (the id of the last log event)",
                    )
                })?,
        ),
    };
    if follow {
        let from = svc.get_watched(&caller, id).await?;
        offset = offset.or(last_event);
        let start = match (offset, tail) {
            (Some(o), _) => o,
            (None, Some(t)) => svc.tail(from.job(), stream, t).await?.1,
            (None, None) => 0,
        };
        return Ok(sse_response(
            svc.follow_log(from, stream, start, SSE_CHUNK, true),
        ));
    }
    let job = svc.get(&caller, id).await?;

    if format == "raw" {
        let from = offset.unwrap_or(0);
        let bytes = svc.read_log(id, stream, from, limit).await?;
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

/// How often an idle follow gets a comment line, so proxies keep the connection open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// A follow as a `text/event-stream` response: the events of [`sse_frames`], with a comment
/// line after every [`KEEP_ALIVE`] of silence.
fn sse_response(
    items: impl Stream<Item = Result<LogItem, ServiceError>> + Send + 'static,
) -> Response {
    use crate::service::readers::{INLINE, detach_after};
    let frames = detach_after(sse_frames(items), INLINE, Bytes::len);
    let body = futures::stream::unfold(frames, |mut frames| async move {
        let next = tokio::select! {
            f = frames.next() => f?,
            _ = tokio::time::sleep(KEEP_ALIVE) => Bytes::from_static(b":\n\n"),
        };
        Some((Ok::<_, Infallible>(next), frames))
    });
    let mut resp = Response::new(Body::from_stream(body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// One event in the wire format: `event`, an optional `id`, one `data` line (JSON has no
/// newline of its own).
fn sse_frame(event: &str, id: Option<u64>, data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + 48);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.as_bytes());
    if let Some(id) = id {
        out.extend_from_slice(format!("\nid: {id}").as_bytes());
    }
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// A `log` event for `data` at `offset` (the id is the next offset, for `Last-Event-ID`
/// resume), and how many of the bytes it holds: a multi-byte character split at the end is left
/// for the next event, so that every event is valid UTF-8.
fn log_frame(offset: u64, data: &[u8]) -> (Bytes, usize) {
    let keep = match std::str::from_utf8(data) {
        Ok(_) => data.len(),
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        Err(_) => data.len(),
    };
    let next = offset + keep as u64;
    let ev = LogEvent {
        offset,
        next_offset: next,
        text: String::from_utf8_lossy(&data[..keep]).into_owned(),
    };
    let json = serde_json::to_vec(&ev).unwrap_or_default();
    (sse_frame("log", Some(next), &json), keep)
}

/// Server-sent events from the service's follow: `log` events until the job ends, then one
/// `end` event. A whole cached block is encoded once for every follower sending it from its
/// start (its memo); anything else (a follower mid-block, or holding part of a character) is
/// encoded for itself.
fn sse_frames(
    items: impl Stream<Item = Result<LogItem, ServiceError>> + Send + 'static,
) -> impl Stream<Item = Bytes> + Send + 'static {
    let mut pending: Vec<u8> = Vec::new();
    items.map(move |item| match item {
        Ok(LogItem::Chunk { offset, data, memo }) => {
            if pending.is_empty() {
                let encode = || log_frame(offset, &data);
                let (frame, keep) = match &memo {
                    Some(m) => m.get_or_init(encode).clone(),
                    None => encode(),
                };
                pending.extend_from_slice(&data[keep..]);
                return frame;
            }
            let mut joined = std::mem::take(&mut pending);
            let start = offset - joined.len() as u64;
            joined.extend_from_slice(&data);
            let (frame, keep) = log_frame(start, &joined);
            pending = joined.split_off(keep);
            frame
        }
        Ok(LogItem::End {
            job, next_offset, ..
        }) => {
            let end = LogEnd {
                status: job.status,
                next_offset,
                truncated: job.log_truncated,
            };
            sse_frame("end", None, &serde_json::to_vec(&end).unwrap_or_default())
        }
        Err(e) if e.code == ErrorCode::JobNotFound => sse_frame("error", None, b"job vanished"),
        Err(_) => sse_frame("error", None, b"log read failed"),
    })
}
