//! warden's jobs as MCP tools, for an AI agent: list the job types, submit one at a commit, wait,
//! read its logs, failed tests and artifacts, cancel it. Nothing here can change a repository:
//! the tools reach exactly what the HTTP API lets the same caller reach.
//!
//! One handler, [`WardenMcp`], serves two transports: streamable HTTP at `/mcp` on
//! `warden serve` (each call runs as the caller the bearer token names, through the
//! [`JobService`]), and stdio for `warden mcp` (each call goes to a server over its API, through
//! a [`Backend`] the CLI provides). The tools themselves are in [`tools`].

pub mod bundle;
mod tools;

use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use warden_api::{
    ArtifactsResponse, ErrorCode, JobTypeView, JobView, SubmitJobRequest, SubmitJobResponse,
    TestStatus, TestsResponse,
};
use warden_core::record::LogStream;

use crate::auth::Caller;
use crate::service::{ArtifactBody, JobService, ServiceError};

pub use tools::TOOL_NAMES;

/// A tool's failure as the agent sees it: warden's error code and message.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolError {
    pub code: String,
    pub message: String,
}

impl ToolError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> ToolError {
        ToolError {
            code: code.into(),
            message: message.into(),
        }
    }
}

impl From<ServiceError> for ToolError {
    fn from(e: ServiceError) -> ToolError {
        ToolError::new(e.code.as_str(), e.message)
    }
}

/// What the tools ask of warden: the API's operations, as one caller.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    async fn job_types(&self) -> Result<Vec<JobTypeView>, ToolError>;
    async fn submit(&self, req: SubmitJobRequest) -> Result<SubmitJobResponse, ToolError>;
    async fn get(&self, id: &str) -> Result<JobView, ToolError>;
    /// Up to `limit` bytes of a stream from `offset`.
    async fn read_log(
        &self,
        id: &str,
        stream: LogStream,
        offset: u64,
        limit: usize,
    ) -> Result<Vec<u8>, ToolError>;
    async fn tests(
        &self,
        id: &str,
        status: Option<TestStatus>,
        limit: u32,
    ) -> Result<TestsResponse, ToolError>;
    async fn artifacts(&self, id: &str) -> Result<ArtifactsResponse, ToolError>;
    /// The first `limit` bytes of one artifact file, and its whole size.
    async fn read_artifact(
        &self,
        id: &str,
        path: &str,
        limit: usize,
    ) -> Result<(Vec<u8>, u64), ToolError>;
    async fn cancel(&self, id: &str) -> Result<JobView, ToolError>;
}

/// Where a session's calls go.
#[derive(Clone)]
enum Target {
    /// This server's service, as the caller of each HTTP request (`/mcp`).
    Service(Arc<JobService>),
    /// A fixed backend (`warden mcp` over stdio).
    Backend(Arc<dyn Backend>),
}

/// The MCP server handler.
#[derive(Clone)]
pub struct WardenMcp {
    target: Target,
}

impl WardenMcp {
    /// Tools that call `backend` (for `warden mcp`, a client of a server).
    pub fn with_backend(backend: Arc<dyn Backend>) -> WardenMcp {
        WardenMcp {
            target: Target::Backend(backend),
        }
    }

    fn backend(&self, ctx: &RequestContext<RoleServer>) -> Result<Arc<dyn Backend>, ToolError> {
        match &self.target {
            Target::Backend(b) => Ok(b.clone()),
            Target::Service(svc) => {
                // The authentication middleware put the caller on the HTTP request; the
                // transport hands the request's parts to each call.
                let caller = ctx
                    .extensions
                    .get::<axum::http::request::Parts>()
                    .and_then(|p| p.extensions.get::<Caller>())
                    .cloned()
                    .ok_or_else(|| {
                        ToolError::new(
                            ErrorCode::Unauthenticated.as_str(),
                            "this call carries no authenticated caller",
                        )
                    })?;
                Ok(Arc::new(ServiceBackend {
                    svc: svc.clone(),
                    caller,
                }))
            }
        }
    }
}

const INSTRUCTIONS: &str = "warden runs a repository's tests and analysis at an exact commit, in \
a kernel sandbox, against a read-only checkout: nothing you run here can change, commit to or \
push the code. Start with list_job_types to see what can run and with which params; submit_job \
queues one (give a full sha, or a ref resolved to one at once) and returns its id; wait_job \
waits for its end; then job_tests lists failing tests first, job_logs reads its output, \
list_artifacts and read_artifact read the files it kept. cancel_job stops a job.";

impl ServerHandler for WardenMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("warden", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(tools::all()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        if !TOOL_NAMES.contains(&request.name.as_ref()) {
            return Err(McpError::invalid_params(
                format!(
                    "no tool {:?}: the tools are {}",
                    request.name,
                    TOOL_NAMES.join(", ")
                ),
                None,
            ));
        }
        let result = match self.backend(&ctx) {
            Ok(backend) => {
                let args = request.arguments.unwrap_or_default();
                tools::call(&*backend, &request.name, args, &ctx.ct).await
            }
            Err(e) => Err(e),
        };
        Ok(match result {
            Ok(out) => out,
            Err(e) => {
                let mut r = CallToolResult::error(vec![ContentBlock::text(format!(
                    "error {}: {}",
                    e.code, e.message
                ))]);
                r.structured_content =
                    Some(serde_json::json!({"error": {"code": e.code, "message": e.message}}));
                r
            }
        }
        .into())
    }
}

/// `/mcp`: the streamable HTTP transport over this server's service. Authentication, the
/// cross-origin refusal and the Host check against DNS rebinding are the HTTP API's own
/// middleware, in front of this service like every route.
pub fn http_service(svc: Arc<JobService>) -> StreamableHttpService<WardenMcp, LocalSessionManager> {
    let config = StreamableHttpServerConfig::default()
        .disable_allowed_hosts()
        .with_cancellation_token(svc.shutdown.child_token());
    StreamableHttpService::new(
        move || {
            Ok(WardenMcp {
                target: Target::Service(svc.clone()),
            })
        },
        LocalSessionManager::default().into(),
        config,
    )
}

/// The service, as one caller.
struct ServiceBackend {
    svc: Arc<JobService>,
    caller: Caller,
}

#[async_trait::async_trait]
impl Backend for ServiceBackend {
    async fn job_types(&self) -> Result<Vec<JobTypeView>, ToolError> {
        Ok(self.svc.job_types(&self.caller).await?)
    }

    async fn submit(&self, req: SubmitJobRequest) -> Result<SubmitJobResponse, ToolError> {
        let (job, created) = self.svc.submit(&self.caller, req).await?;
        Ok(SubmitJobResponse {
            job_id: job.id.to_string(),
            artifact_dir: self.svc.artifact_dir(job.id),
            status: job.status,
            idempotent_replay: !created,
        })
    }

    async fn get(&self, id: &str) -> Result<JobView, ToolError> {
        let id = JobService::parse_id(id)?;
        let job = self.svc.get(&self.caller, id).await?;
        Ok(self.svc.view(&job))
    }

    async fn read_log(
        &self,
        id: &str,
        stream: LogStream,
        offset: u64,
        limit: usize,
    ) -> Result<Vec<u8>, ToolError> {
        let id = JobService::parse_id(id)?;
        self.svc.get(&self.caller, id).await?;
        Ok(self.svc.read_log(id, stream, offset, limit).await?)
    }

    async fn tests(
        &self,
        id: &str,
        status: Option<TestStatus>,
        limit: u32,
    ) -> Result<TestsResponse, ToolError> {
        let id = JobService::parse_id(id)?;
        Ok(self.svc.tests(&self.caller, id, status, 0, limit).await?)
    }

    async fn artifacts(&self, id: &str) -> Result<ArtifactsResponse, ToolError> {
        let id = JobService::parse_id(id)?;
        let (artifacts, truncated) = self.svc.artifacts(&self.caller, id).await?;
        Ok(ArtifactsResponse {
            job_id: id.to_string(),
            artifacts,
            truncated,
        })
    }

    async fn read_artifact(
        &self,
        id: &str,
        path: &str,
        limit: usize,
    ) -> Result<(Vec<u8>, u64), ToolError> {
        use futures::StreamExt;
        let id = JobService::parse_id(id)?;
        let body = self
            .svc
            .open_artifact(&self.caller, id, path.as_bytes())
            .await?;
        let size = body.len();
        let head = match body {
            ArtifactBody::File(file, _) => tokio::task::spawn_blocking(move || {
                use std::io::Read;
                let mut head = Vec::new();
                file.take(limit as u64).read_to_end(&mut head).map(|_| head)
            })
            .await
            .map_err(|e| ToolError::from(ServiceError::internal("artifact read task", e)))?
            .map_err(|e| ToolError::from(ServiceError::internal("artifact read", e)))?,
            ArtifactBody::Stream(mut stream, _) => {
                let mut head = Vec::new();
                while head.len() < limit {
                    match stream.next().await {
                        Some(Ok(chunk)) => {
                            let take = chunk.len().min(limit - head.len());
                            head.extend_from_slice(&chunk[..take]);
                        }
                        Some(Err(e)) => {
                            return Err(ServiceError::internal("artifact store", e).into());
                        }
                        None => break,
                    }
                }
                head
            }
        };
        Ok((head, size))
    }

    async fn cancel(&self, id: &str) -> Result<JobView, ToolError> {
        let id = JobService::parse_id(id)?;
        let job = self.svc.cancel(&self.caller, id).await?;
        Ok(self.svc.view(&job))
    }
}
