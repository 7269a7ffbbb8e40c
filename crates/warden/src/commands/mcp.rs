//! `warden mcp`: warden's MCP server on stdin/stdout, for an agent on this machine (Claude Code,
//! Codex, any MCP client that starts a command). Each tool call goes to the server of the
//! current context (or `--server`, `--token-file`) over its API, as that token's caller.

use std::sync::Arc;

use rmcp::ServiceExt;
use warden_api::{
    ArtifactsResponse, JobTypeView, JobView, SubmitJobRequest, SubmitJobResponse, TestStatus,
    TestsResponse,
};
use warden_client::{Client, ClientError};
use warden_core::record::LogStream;
use warden_server::mcp::{Backend, ToolError, WardenMcp};

use crate::cli::ClientArgs;
use crate::exit;

pub async fn run(args: ClientArgs) -> i32 {
    let client = match crate::commands::job::connect(&args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let handler = WardenMcp::with_backend(Arc::new(Remote(client)));
    // stdout is the protocol: everything else (logs, errors) goes to stderr.
    let session = match handler.serve(rmcp::transport::stdio()).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: the MCP session did not start: {e}");
            return exit::USAGE;
        }
    };
    match session.waiting().await {
        Ok(_) => exit::OK,
        Err(e) => {
            eprintln!("error: the MCP session failed: {e}");
            exit::UNAVAILABLE
        }
    }
}

/// A server's API, as the context's token.
struct Remote(Client);

fn tool_error(e: ClientError) -> ToolError {
    match e {
        ClientError::Api { code, message, .. } => ToolError::new(code.as_str(), message),
        ClientError::Unreachable { .. } => ToolError::new("unavailable", e.to_string()),
        ClientError::Protocol(_) => ToolError::new("internal", e.to_string()),
    }
}

#[async_trait::async_trait]
impl Backend for Remote {
    async fn job_types(&self) -> Result<Vec<JobTypeView>, ToolError> {
        Ok(self.0.job_types().await.map_err(tool_error)?.job_types)
    }

    async fn submit(&self, req: SubmitJobRequest) -> Result<SubmitJobResponse, ToolError> {
        self.0.submit(&req).await.map_err(tool_error)
    }

    async fn get(&self, id: &str) -> Result<JobView, ToolError> {
        self.0.get(id).await.map_err(tool_error)
    }

    async fn read_log(
        &self,
        id: &str,
        stream: LogStream,
        offset: u64,
        limit: usize,
    ) -> Result<Vec<u8>, ToolError> {
        self.0
            .logs_range(id, stream.as_str(), offset, limit)
            .await
            .map_err(tool_error)
    }

    async fn tests(
        &self,
        id: &str,
        status: Option<TestStatus>,
        limit: u32,
    ) -> Result<TestsResponse, ToolError> {
        self.0
            .tests(id, status, None, limit)
            .await
            .map_err(tool_error)
    }

    async fn artifacts(&self, id: &str) -> Result<ArtifactsResponse, ToolError> {
        self.0.artifacts(id).await.map_err(tool_error)
    }

    async fn read_artifact(
        &self,
        id: &str,
        path: &str,
        limit: usize,
    ) -> Result<(Vec<u8>, u64), ToolError> {
        self.0
            .artifact_head(id, path, limit)
            .await
            .map_err(tool_error)
    }

    async fn cancel(&self, id: &str) -> Result<JobView, ToolError> {
        self.0.cancel(id).await.map_err(tool_error)
    }
}
