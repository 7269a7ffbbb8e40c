//! The HTTP/JSON API. Handlers parse and translate; [`JobService`] decides.

mod admin;
mod auth;
mod error;
mod json;
mod logs;
mod query;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Extension, Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use warden_api::{
    ArtifactsResponse, ErrorCode, JobStatus, JobTypesResponse, ListJobsResponse, SubmitJobRequest,
    SubmitJobResponse,
};
use warden_core::JobId;

pub use self::json::{JsonBody, MAX_BODY_BYTES};
use self::query::{parse_query, query_num};
use crate::auth::Caller;
use crate::service::{ArtifactBody, JobService, ListQuery, ServiceError};

pub type AppState = Arc<JobService>;

/// The whole API as a router, so tests can call it without a socket.
pub fn app(service: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/jobs", post(submit).get(list))
        .route("/jobs/{id}", get(get_job))
        .route("/jobs/{id}/cancel", post(cancel))
        .route("/jobs/{id}/logs", get(logs::logs))
        .route("/jobs/{id}/artifacts", get(artifacts))
        .route("/jobs/{id}/tests", get(tests))
        .route("/jobs/{id}/artifacts/{*path}", get(download))
        .route("/job-types", get(job_types))
        .route("/whoami", get(admin::whoami))
        .route("/tokens", post(admin::create_token).get(admin::list_tokens))
        .route("/tokens/{id}/revoke", post(admin::revoke_token))
        .route("/audit", get(admin::audit))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            service.clone(),
            auth::authenticate,
        ))
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
    ServiceError::internal("request handler panicked", detail).into_response()
}

async fn not_found() -> ServiceError {
    ServiceError::new(
        ErrorCode::NotFound,
        "no such endpoint; see GET /job-types and the README",
    )
}

async fn method_not_allowed() -> ServiceError {
    ServiceError::new(
        ErrorCode::MethodNotAllowed,
        "method not allowed on this endpoint",
    )
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"ok": true}))
}

/// Ready to serve: the store answers, and this replica takes jobs (it is not draining). 503
/// with what is not ready otherwise.
async fn readyz(State(svc): State<AppState>) -> Response {
    let store = svc
        .store
        .list(&warden_store::ListFilter {
            limit: 1,
            ..Default::default()
        })
        .await;
    let accepting = svc.accepting();
    let body = serde_json::json!({
        "ready": store.is_ok() && accepting,
        "store": match &store { Ok(_) => "ok".to_string(), Err(e) => e.to_string() },
        "accepting_jobs": accepting,
    });
    let code = if store.is_ok() && accepting {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// Prometheus text exposition (admin scope: it spans every tenant).
async fn metrics(
    State(svc): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ServiceError> {
    svc.authorize(&caller, crate::auth::Scope::Admin, "metrics")
        .await?;
    let Some(m) = &svc.metrics else {
        return Err(ServiceError::new(
            warden_api::ErrorCode::NotFound,
            "this server exports no metrics",
        ));
    };
    let text = m
        .render(svc.store.as_ref())
        .await
        .map_err(|e| ServiceError::internal("metrics", e))?;
    let mut resp = Response::new(Body::from(text));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(resp)
}

async fn submit(
    State(svc): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(req): JsonBody<SubmitJobRequest>,
) -> Result<Response, ServiceError> {
    let (job, created) = svc.submit(&caller, req).await?;
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
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ServiceError> {
    let id = JobService::parse_id(&id)?;
    let job = svc.get(&caller, id).await?;
    Ok(Json(svc.view(&job)).into_response())
}

async fn tests(
    State(svc): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ServiceError> {
    let id = JobService::parse_id(&id)?;
    let q = parse_query(raw, &["status", "cursor", "limit"])?;
    let status = match q.get("status") {
        None => None,
        Some(s) => Some(warden_api::TestStatus::parse(s).ok_or_else(|| {
            ServiceError::new(
                ErrorCode::InvalidQuery,
                format!("status={s:?} is invalid; one of: passed, failed, error, skipped"),
            )
        })?),
    };
    let limit = query_num(&q, "limit", 1u32..=10_000)?.unwrap_or(1000);
    let after = query_num(&q, "cursor", 0u64..=u64::MAX / 2)?.unwrap_or(0);
    Ok(Json(svc.tests(&caller, id, status, after, limit).await?).into_response())
}

async fn list(
    State(svc): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ServiceError> {
    let q = parse_query(raw, &["status", "job_type", "limit", "cursor", "tenant"])?;
    let status = match q.get("status") {
        None => None,
        Some(s) => Some(JobStatus::parse(s).ok_or_else(|| {
            ServiceError::new(
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
            ServiceError::new(
                ErrorCode::InvalidQuery,
                format!("cursor={c:?} is not a cursor from a previous page"),
            )
        })?),
    };
    let query = ListQuery {
        tenant: q.get("tenant").cloned(),
        status,
        job_type: q.get("job_type").cloned(),
        before,
        limit,
    };
    let (jobs, next_cursor) = svc.list(&caller, query).await?;
    let body = ListJobsResponse {
        jobs: jobs.iter().map(|j| svc.view(j)).collect(),
        next_cursor,
    };
    Ok(Json(body).into_response())
}

async fn cancel(
    State(svc): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ServiceError> {
    let id = JobService::parse_id(&id)?;
    let job = svc.cancel(&caller, id).await?;
    Ok((StatusCode::ACCEPTED, Json(svc.view(&job))).into_response())
}

async fn job_types(
    State(svc): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<JobTypesResponse>, ServiceError> {
    Ok(Json(JobTypesResponse {
        job_types: svc.job_types(&caller).await?,
    }))
}

async fn artifacts(
    State(svc): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ServiceError> {
    let id = JobService::parse_id(&id)?;
    let (artifacts, truncated) = svc.artifacts(&caller, id).await?;
    Ok(Json(ArtifactsResponse {
        job_id: id.to_string(),
        artifacts,
        truncated,
    })
    .into_response())
}

/// The job id and artifact path of a download URL (`/jobs/{id}/artifacts/{path}`), the path as
/// exact bytes: percent-decoded from the URL itself, since a name need not be UTF-8 (which a
/// `String` extractor would refuse with a non-JSON answer).
fn download_target(uri: &axum::http::Uri) -> (String, Vec<u8>) {
    let rest = uri.path().strip_prefix("/jobs/").unwrap_or("");
    let (id, path) = rest.split_once("/artifacts/").unwrap_or((rest, ""));
    let id = percent_encoding::percent_decode_str(id)
        .decode_utf8_lossy()
        .into_owned();
    (id, percent_encoding::percent_decode_str(path).collect())
}

async fn download(
    State(svc): State<AppState>,
    Extension(caller): Extension<Caller>,
    uri: axum::http::Uri,
) -> Result<Response, ServiceError> {
    let (raw_id, path) = download_target(&uri);
    let id = JobService::parse_id(&raw_id)?;
    let body = svc.open_artifact(&caller, id, &path).await?;
    let len = body.len();
    let mut resp = Response::new(match body {
        ArtifactBody::File(file, _) => Body::from_stream(tokio_util::io::ReaderStream::new(
            tokio::fs::File::from_std(file),
        )),
        ArtifactBody::Stream(stream, _) => Body::from_stream(stream),
    });
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
