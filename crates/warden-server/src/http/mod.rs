//! The HTTP/JSON API. Handlers parse and translate; [`JobService`] decides.

mod admin;
mod auth;
mod error;
mod json;
mod logs;
pub mod openapi;
mod query;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Extension, Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
#[allow(unused_imports)] // the OpenAPI annotations name some of them
use warden_api::{
    ArtifactsResponse, ErrorBody, ErrorCode, JobStatus, JobTypesResponse, JobView,
    ListJobsResponse, SubmitJobRequest, SubmitJobResponse, TestStatus, TestsResponse,
    WebhooksResponse,
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
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/jobs", post(submit).get(list))
        .route("/jobs/{id}", get(get_job))
        .route("/jobs/{id}/cancel", post(cancel))
        .route("/jobs/{id}/logs", get(logs::logs))
        .route("/jobs/{id}/artifacts", get(artifacts))
        .route("/jobs/{id}/tests", get(tests))
        .route("/jobs/{id}/webhooks", get(webhooks))
        .route("/jobs/{id}/artifacts/{*path}", get(download))
        .route("/job-types", get(job_types))
        .route("/whoami", get(admin::whoami))
        .route("/tokens", post(admin::create_token).get(admin::list_tokens))
        .route("/tokens/{id}/revoke", post(admin::revoke_token))
        .route("/audit", get(admin::audit))
        .nest_service("/mcp", crate::mcp::http_service(service.clone()))
        .merge(crate::ui::routes())
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

/// Alive: the process answers. No authentication.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is alive: `{\"ok\": true}`", body = serde_json::Value)))]
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"ok": true}))
}

#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready: the store answers, this replica takes jobs, and its sandbox self-test passed", body = serde_json::Value),
        (status = 503, description = "Not ready: what is not, as `{ready, store, sandbox, accepting_jobs}`", body = serde_json::Value),
    ))]
/// Ready to serve: the store answers, this replica takes jobs (it is not draining) and, where
/// it runs jobs itself, the sandbox's start-up self-test passed. 503 with what is not ready
/// otherwise.
async fn readyz(State(svc): State<AppState>) -> Response {
    let store = svc
        .store
        .list(&warden_store::ListFilter {
            limit: 1,
            ..Default::default()
        })
        .await;
    let accepting = svc.accepting();
    let ready = store.is_ok() && accepting && svc.sandbox.is_ok();
    let body = serde_json::json!({
        "ready": ready,
        "store": match &store { Ok(_) => "ok".to_string(), Err(e) => e.to_string() },
        "sandbox": match &svc.sandbox { Ok(()) => "ok".to_string(), Err(e) => format!("self-test failed: {e}") },
        "accepting_jobs": accepting,
    });
    let code = if ready {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus text exposition of this replica's metrics", content_type = "text/plain", body = String),
        (status = 403, description = "The token lacks the `admin` scope (`forbidden`)", body = ErrorBody),
        (status = 404, description = "This server exports no metrics (`not_found`)", body = ErrorBody),
    ))]
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

/// Submit a job: a job type, its params, and for a repository job the repository and a full
/// sha or a ref (resolved to a sha now and recorded).
#[utoipa::path(post, path = "/jobs", tag = "jobs", request_body = SubmitJobRequest,
    responses(
        (status = 201, description = "Queued", body = SubmitJobResponse),
        (status = 200, description = "An earlier submission with the same `idempotency_key`", body = SubmitJobResponse),
        (status = 400, description = "The body is not JSON (`malformed_json`)", body = ErrorBody),
        (status = 403, description = "The token lacks the `submit` scope, or its tenant may not use this job type or repository", body = ErrorBody),
        (status = 409, description = "The `idempotency_key` was used for a different request (`idempotency_conflict`)", body = ErrorBody),
        (status = 413, description = "The body is over 1 MiB (`payload_too_large`)", body = ErrorBody),
        (status = 415, description = "The body is not `application/json` (`unsupported_media_type`)", body = ErrorBody),
        (status = 422, description = "A field is wrong: `unknown_field`, `invalid_request`, `unknown_job_type`, `unknown_param`, `invalid_param`, `repo_required`, `repo_not_allowed`, `invalid_ref`", body = ErrorBody),
        (status = 502, description = "The repository's server (resolving a ref) or the image's registry could not be reached (`repo_unavailable`, `image_unavailable`)", body = ErrorBody),
        (status = 503, description = "The server is shutting down (`shutting_down`)", body = ErrorBody),
    ))]
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

/// A job's whole record.
#[utoipa::path(get, path = "/jobs/{id}", tag = "jobs", params(("id" = uuid::Uuid, Path, description = "The job id (a UUIDv7, as `POST /jobs` returned it)")),
    responses(
        (status = 200, description = "The job's record", body = JobView),
        (status = 400, description = "Not a job id (`invalid_job_id`)", body = ErrorBody),
        (status = 404, description = "No such job visible to the caller (`job_not_found`)", body = ErrorBody),
    ))]
async fn get_job(
    State(svc): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ServiceError> {
    let id = JobService::parse_id(&id)?;
    let job = svc.get(&caller, id).await?;
    Ok(Json(svc.view(&job)).into_response())
}

/// A finished job's test results (from its JUnit reports), failures first.
#[utoipa::path(get, path = "/jobs/{id}/tests", tag = "jobs",
    params(
        ("id" = uuid::Uuid, Path, description = "The job id (a UUIDv7, as `POST /jobs` returned it)"),
        ("status" = Option<TestStatus>, Query, description = "Only test cases that ended so"),
        ("cursor" = Option<u64>, Query, description = "`next_cursor` of the previous page"),
        ("limit" = Option<u32>, Query, description = "Page size, 1 to 10000 (default 1000)", minimum = 1, maximum = 10000),
    ),
    responses(
        (status = 200, description = "Test cases, failed and errored first", body = TestsResponse),
        (status = 400, description = "Not a job id, or a bad query parameter (`invalid_job_id`, `invalid_query`)", body = ErrorBody),
        (status = 404, description = "No such job (`job_not_found`)", body = ErrorBody),
    ))]
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

/// A job's webhook deliveries (`events.webhooks`: its tenant's URL and its `callback_url`), each
/// with its attempts, oldest first.
#[utoipa::path(get, path = "/jobs/{id}/webhooks", tag = "jobs",
    params(("id" = uuid::Uuid, Path, description = "The job id (a UUIDv7, as `POST /jobs` returned it)")),
    responses(
        (status = 200, description = "The deliveries of the job's state changes", body = WebhooksResponse),
        (status = 400, description = "Not a job id (`invalid_job_id`)", body = ErrorBody),
        (status = 404, description = "No such job (`job_not_found`)", body = ErrorBody),
    ))]
async fn webhooks(
    State(svc): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ServiceError> {
    let id = JobService::parse_id(&id)?;
    Ok(Json(svc.webhooks(&caller, id).await?).into_response())
}

/// Jobs, newest first, a page at a time.
#[utoipa::path(get, path = "/jobs", tag = "jobs",
    params(
        ("status" = Option<JobStatus>, Query, description = "Only jobs in this state"),
        ("job_type" = Option<String>, Query, description = "Only jobs of this type"),
        ("repo" = Option<String>, Query, description = "Only jobs on this repository (`repo_name`)"),
        ("tenant" = Option<String>, Query, description = "Only this tenant's jobs (admin: any tenant; otherwise only the caller's own)"),
        ("limit" = Option<u32>, Query, description = "Page size, 1 to 500 (default 50)", minimum = 1, maximum = 500),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of jobs", body = ListJobsResponse),
        (status = 400, description = "A bad query parameter (`invalid_query`)", body = ErrorBody),
        (status = 403, description = "Another tenant's jobs without the `admin` scope", body = ErrorBody),
    ))]
async fn list(
    State(svc): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ServiceError> {
    let q = parse_query(
        raw,
        &["status", "job_type", "repo", "limit", "cursor", "tenant"],
    )?;
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
        repo_name: q.get("repo").cloned(),
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

/// Ask a job to stop: a queued job is cancelled at once, a running one is signalled (SIGTERM,
/// then SIGKILL after its grace period).
#[utoipa::path(post, path = "/jobs/{id}/cancel", tag = "jobs", params(("id" = uuid::Uuid, Path, description = "The job id (a UUIDv7, as `POST /jobs` returned it)")),
    responses(
        (status = 202, description = "Cancellation recorded; the job's record as it is now", body = JobView),
        (status = 400, description = "Not a job id (`invalid_job_id`)", body = ErrorBody),
        (status = 403, description = "The token lacks the `cancel` scope", body = ErrorBody),
        (status = 404, description = "No such job (`job_not_found`)", body = ErrorBody),
        (status = 409, description = "The job has already ended (`job_finished`)", body = ErrorBody),
    ))]
async fn cancel(
    State(svc): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ServiceError> {
    let id = JobService::parse_id(&id)?;
    let job = svc.cancel(&caller, id).await?;
    Ok((StatusCode::ACCEPTED, Json(svc.view(&job))).into_response())
}

/// The job types the caller may submit.
#[utoipa::path(get, path = "/job-types", tag = "jobs",
    responses((status = 200, description = "Job types", body = JobTypesResponse)))]
async fn job_types(
    State(svc): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<JobTypesResponse>, ServiceError> {
    Ok(Json(JobTypesResponse {
        job_types: svc.job_types(&caller).await?,
    }))
}

/// A finished job's artifact directory, listed.
#[utoipa::path(get, path = "/jobs/{id}/artifacts", tag = "artifacts", params(("id" = uuid::Uuid, Path, description = "The job id (a UUIDv7, as `POST /jobs` returned it)")),
    responses(
        (status = 200, description = "Every entry, recursively (at most 10,000)", body = ArtifactsResponse),
        (status = 400, description = "Not a job id (`invalid_job_id`)", body = ErrorBody),
        (status = 404, description = "No such job (`job_not_found`)", body = ErrorBody),
    ))]
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

/// One artifact file's exact bytes.
#[utoipa::path(get, path = "/jobs/{id}/artifacts/{path}", tag = "artifacts",
    params(
        ("id" = uuid::Uuid, Path, description = "The job id (a UUIDv7, as `POST /jobs` returned it)"),
        ("path" = String, Path, description = "The file's path in the artifact directory, `/`-separated, each byte that needs it percent-encoded"),
    ),
    responses(
        (status = 200, description = "The file", content_type = "application/octet-stream", body = String),
        (status = 400, description = "Not a job id, or a path that leaves the directory (`invalid_job_id`, `invalid_path`)", body = ErrorBody),
        (status = 404, description = "No such job or file (`job_not_found`, `artifact_not_found`)", body = ErrorBody),
        (status = 422, description = "The path names a directory or something else that is not a file (`not_a_file`)", body = ErrorBody),
    ))]
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
    // A job wrote this file: a browser saves it, never renders it in warden's origin.
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; default-src 'none'"),
    );
    Ok(resp)
}
