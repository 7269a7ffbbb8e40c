//! `GET /jobs/{id}/logs`: the last lines as JSON, exact bytes, or a live follow over
//! server-sent events.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use warden_api::{ErrorCode, LogEnd, LogEvent, LogsResponse};
use warden_store::LogStream;

use super::AppState;
use super::query::{parse_query, query_bool, query_num};
use crate::service::{JobService, LogItem, ServiceError};

/// Bytes read from the store per SSE event.
const SSE_CHUNK: usize = 64 * 1024;

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
    let mut offset = query_num(&q, "offset", 0u64..=u64::MAX)?;
    let format = q.get("format").map(String::as_str).unwrap_or("json");
    if !matches!(format, "json" | "raw") {
        return Err(ServiceError::new(
            ErrorCode::InvalidQuery,
            format!("format={format:?} is invalid: json or raw"),
        ));
    }
    let limit = query_num(&q, "limit", 1usize..=16 << 20)?.unwrap_or(16 << 20);
    let job = svc.get(&caller, id).await?;

    if follow {
        if offset.is_none()
            && let Some(last) = headers.get("last-event-id").and_then(|v| v.to_str().ok())
        {
            offset = Some(last.parse().map_err(|_| {
                ServiceError::new(
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
        let events = sse_events(svc.follow_log(id, stream, start, SSE_CHUNK, true));
        return Ok(Sse::new(events)
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
            .into_response());
    }

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

/// Server-sent events from the service's follow: `log` events (id = next offset, for
/// `Last-Event-ID` resume) until the job ends, then one `end` event. A multi-byte character
/// split between two chunks is held back until it is whole, so every event is valid UTF-8.
fn sse_events(
    items: impl Stream<Item = Result<LogItem, ServiceError>> + Send + 'static,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let mut pending: Vec<u8> = Vec::new();
    items.map(move |item| {
        let event = match item {
            Ok(LogItem::Chunk {
                offset,
                data: chunk,
            }) => {
                let mut data = std::mem::take(&mut pending);
                let start = offset - data.len() as u64;
                data.extend_from_slice(&chunk);
                let keep = match std::str::from_utf8(&data) {
                    Ok(_) => data.len(),
                    Err(e) if e.error_len().is_none() => e.valid_up_to(),
                    Err(_) => data.len(),
                };
                pending = data.split_off(keep);
                let next = start + data.len() as u64;
                let ev = LogEvent {
                    offset: start,
                    next_offset: next,
                    text: String::from_utf8_lossy(&data).into_owned(),
                };
                Event::default()
                    .event("log")
                    .id(next.to_string())
                    .json_data(ev)
                    .unwrap_or_else(|_| Event::default().event("log"))
            }
            Ok(LogItem::End {
                job, next_offset, ..
            }) => {
                let end = LogEnd {
                    status: job.status,
                    next_offset,
                    truncated: job.log_truncated,
                };
                Event::default()
                    .event("end")
                    .json_data(end)
                    .unwrap_or_default()
            }
            Err(e) if e.code == ErrorCode::JobNotFound => {
                Event::default().event("error").data("job vanished")
            }
            Err(_) => Event::default().event("error").data("log read failed"),
        };
        Ok(event)
    })
}
