//! The OpenAPI 3.1 document of the HTTP API, generated from the handlers' annotations and
//! `warden-api`'s types (utoipa). `openapi.json` at the repository's root is this document,
//! checked in; a test fails when the two differ. Served at `GET /openapi.json`.

use axum::Json;
use axum::response::IntoResponse;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, RefOr, ResponseBuilder};

/// Paths that answer without a token.
const PUBLIC: [&str; 3] = ["/healthz", "/readyz", "/openapi.json"];

#[derive(OpenApi)]
#[openapi(
    info(
        title = "warden",
        description = "warden's HTTP API: submit jobs that run a repository's tests and analysis at an \
exact commit in a kernel sandbox, follow their logs, read their records, test results and artifacts. \
Every error answer is `{\"error\": {\"code\", \"message\"}}` with a machine-readable code; a caller's \
mistake is always a 4xx. Authentication: `Authorization: Bearer <token>` (`warden token create`), or \
the web UI's session cookie.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        super::submit,
        super::list,
        super::get_job,
        super::cancel,
        super::logs::logs,
        super::tests,
        super::webhooks,
        super::artifacts,
        super::download,
        super::job_types,
        super::admin::whoami,
        super::admin::create_token,
        super::admin::list_tokens,
        super::admin::revoke_token,
        super::admin::audit,
        super::healthz,
        super::readyz,
        super::metrics,
        openapi_json,
    ),
    components(schemas(
        warden_api::LogEvent,
        warden_api::LogEnd,
        StreamParam,
        FormatParam,
        LogStreamEvent
    )),
    modifiers(&Perimeter),
    tags(
        (name = "jobs", description = "Submit, list, follow and cancel jobs; their logs and test results"),
        (name = "artifacts", description = "The files a job left in its artifact directory"),
        (name = "admin", description = "The caller, tokens and the audit log"),
        (name = "operations", description = "Probes, metrics and this document"),
    ),
)]
pub struct ApiDoc;

/// The document as served and checked in: pretty JSON with a final newline.
pub fn document() -> String {
    let mut text = ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes");
    text.push('\n');
    text
}

/// A log's stream, as `GET /jobs/{id}/logs` takes it (documentation only: the handler parses
/// the query string itself, strictly).
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum StreamParam {
    Stdout,
    Stderr,
}

/// How `GET /jobs/{id}/logs` answers without `follow`.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum FormatParam {
    Json,
    Raw,
}

/// One server-sent event of a followed log (`follow=true`), as a client's SSE parser gives it.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct LogStreamEvent {
    /// `log` (`data` is a `LogEvent`), then `end` (`data` is a `LogEnd`); `error` if the log
    /// could not be read.
    pub event: String,
    /// A `log` event's next offset: reconnect with it as `Last-Event-ID` (or `offset=`).
    pub id: Option<String>,
    /// The event's JSON.
    pub data: String,
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", body = serde_json::Value)))]
pub(super) async fn openapi_json() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}

/// The bearer scheme on every path but the public ones, and the answers every authenticated
/// path can give: 401 without a valid token, 429 over the token's rate, 500 for warden's own
/// failure.
struct Perimeter;

impl utoipa::Modify for Perimeter {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A token from `warden token create` or `POST /tokens`"))
                    .build(),
            ),
        );
        let error = |text: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(text)
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                                "ErrorBody",
                            ))))
                            .build(),
                    )
                    .build(),
            )
        };
        for (path, item) in api.paths.paths.iter_mut() {
            if PUBLIC.contains(&path.as_str()) {
                continue;
            }
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                op.security = Some(vec![SecurityRequirement::new(
                    "bearer",
                    Vec::<String>::new(),
                )]);
                let responses = &mut op.responses.responses;
                for (code, text) in [
                    (
                        "401",
                        "No valid token: missing, malformed, unknown, expired or revoked (`unauthenticated`)",
                    ),
                    (
                        "429",
                        "Over the token's request rate, or the tenant's queue is full (`rate_limited`, `queue_full`); see `Retry-After`",
                    ),
                    ("500", "warden's own failure (`internal`)"),
                ] {
                    responses
                        .entry(code.to_string())
                        .or_insert_with(|| error(text));
                }
            }
        }
    }
}
