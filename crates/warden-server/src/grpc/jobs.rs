//! `warden.v1.JobService`: a translation of the service layer.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use warden_api::{ErrorCode, SubmitJobRequest};
use warden_proto::{job_to_pb, parse_job_id, pb, status_from_pb, status_to_pb, stream_from_pb};

use super::{caller, invalid, status};
use crate::service::{JobService, ListQuery, LogItem, ServiceError};

pub(crate) struct Jobs {
    svc: Arc<JobService>,
}

impl Jobs {
    pub(crate) fn new(svc: Arc<JobService>) -> Jobs {
        Jobs { svc }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn job_id(raw: &str) -> Result<warden_core::JobId, Status> {
    JobService::parse_id(raw).map_err(status)
}

#[tonic::async_trait]
impl pb::job_service_server::JobService for Jobs {
    async fn submit_job(
        &self,
        req: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let caller = caller(&self.svc, &req, "grpc SubmitJob").await?;
        let r = req.into_inner();
        let submit = SubmitJobRequest {
            job_type: r.job_type,
            repo_name: r.repo_name,
            remote_url: r.remote_url,
            sha: r.sha,
            git_ref: r.r#ref,
            params: r.params.into_iter().collect(),
            idempotency_key: r.idempotency_key,
            command: r.command,
            callback_url: r.callback_url,
            tool_bundle: r.tool_bundle,
            tool_env_var: r.tool_env_var,
        };
        let (job, created) = self.svc.submit(&caller, submit).await.map_err(status)?;
        Ok(Response::new(pb::SubmitJobResponse {
            job: Some(job_to_pb(&job)),
            created,
        }))
    }

    async fn get_job(&self, req: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        let caller = caller(&self.svc, &req, "grpc GetJob").await?;
        let id = job_id(&req.get_ref().job_id)?;
        let job = self.svc.get(&caller, id).await.map_err(status)?;
        Ok(Response::new(job_to_pb(&job)))
    }

    async fn list_jobs(
        &self,
        req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let caller = caller(&self.svc, &req, "grpc ListJobs").await?;
        let r = req.into_inner();
        let limit = match r.limit {
            0 => 50,
            n @ 1..=500 => n,
            n => {
                return Err(status(ServiceError::new(
                    ErrorCode::InvalidQuery,
                    format!("limit {n} is out of range: 1..=500 (0 means 50)"),
                )));
            }
        };
        let before = match r.before.filter(|b| !b.is_empty()) {
            Some(b) => Some(parse_job_id(&b).map_err(invalid)?),
            None => None,
        };
        let query = ListQuery {
            tenant: None,
            status: r.status.map(status_from_pb).transpose().map_err(invalid)?,
            job_type: r.job_type.filter(|t| !t.is_empty()),
            repo_name: r.repo_name.filter(|t| !t.is_empty()),
            before,
            limit,
        };
        let (jobs, next_before) = self.svc.list(&caller, query).await.map_err(status)?;
        Ok(Response::new(pb::ListJobsResponse {
            jobs: jobs.iter().map(job_to_pb).collect(),
            next_before,
        }))
    }

    type StreamJobLogsStream = BoxStream<pb::LogChunk>;

    async fn stream_job_logs(
        &self,
        req: Request<pb::StreamJobLogsRequest>,
    ) -> Result<Response<Self::StreamJobLogsStream>, Status> {
        let caller = caller(&self.svc, &req, "grpc StreamJobLogs").await?;
        let r = req.into_inner();
        let id = job_id(&r.job_id)?;
        let stream = stream_from_pb(r.stream).map_err(invalid)?;
        // Unknown jobs fail the call itself, not the first message.
        let from = self.svc.get_watched(&caller, id).await.map_err(status)?;
        let pb_stream = r.stream;
        let follow = self
            .svc
            .follow_log(from, stream, r.offset, warden_proto::MAX_CHUNK, r.follow);
        let size = |i: &Result<LogItem, ServiceError>| match i {
            Ok(LogItem::Chunk { data, .. }) => data.len(),
            _ => 0,
        };
        let chunks =
            crate::service::readers::detach_after(follow, crate::service::readers::INLINE, size)
                .map(move |item| match item {
                    Ok(LogItem::Chunk { offset, data, .. }) => Ok(pb::LogChunk {
                        stream: pb_stream,
                        offset,
                        end: false,
                        status: 0,
                        truncated: false,
                        data: data.to_vec(),
                    }),
                    Ok(LogItem::End {
                        job,
                        next_offset,
                        ended,
                    }) => Ok(pb::LogChunk {
                        stream: pb_stream,
                        offset: next_offset,
                        data: Vec::new(),
                        end: ended,
                        status: status_to_pb(job.status) as i32,
                        truncated: job.log_truncated,
                    }),
                    Err(e) => Err(status(e)),
                });
        Ok(Response::new(Box::pin(chunks)))
    }

    async fn cancel_job(
        &self,
        req: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let caller = caller(&self.svc, &req, "grpc CancelJob").await?;
        let id = job_id(&req.get_ref().job_id)?;
        let job = self.svc.cancel(&caller, id).await.map_err(status)?;
        Ok(Response::new(job_to_pb(&job)))
    }

    async fn list_tests(
        &self,
        req: Request<pb::ListTestsRequest>,
    ) -> Result<Response<pb::ListTestsResponse>, Status> {
        let caller = caller(&self.svc, &req, "grpc ListTests").await?;
        let r = req.get_ref();
        let id = job_id(&r.job_id)?;
        let status_filter = warden_proto::test_status_from_pb(r.status)
            .map_err(|e| Status::invalid_argument(e.0))?;
        let after = if r.cursor.is_empty() {
            0
        } else {
            r.cursor.parse::<u64>().map_err(|_| {
                Status::invalid_argument(format!("cursor {:?} is invalid", r.cursor))
            })?
        };
        let limit = match r.limit {
            0 => crate::service::DEFAULT_TESTS_LIMIT,
            n if n <= crate::service::MAX_TESTS_LIMIT => n,
            n => {
                return Err(Status::invalid_argument(format!(
                    "limit {n} is invalid: 1 to {}",
                    crate::service::MAX_TESTS_LIMIT
                )));
            }
        };
        let page = self
            .svc
            .tests(&caller, id, status_filter, after, limit)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListTestsResponse {
            counts: page.counts.as_ref().map(warden_proto::counts_to_pb),
            tests: page.tests.iter().map(warden_proto::test_to_pb).collect(),
            next_cursor: page.next_cursor,
        }))
    }

    type WatchJobStream = BoxStream<pb::Job>;

    async fn watch_job(
        &self,
        req: Request<pb::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let caller = caller(&self.svc, &req, "grpc WatchJob").await?;
        let id = job_id(&req.get_ref().job_id)?;
        let jobs = self.svc.watch(&caller, id).await.map_err(status)?;
        Ok(Response::new(Box::pin(jobs.map(|j| match j {
            Ok(job) => Ok(job_to_pb(&job)),
            Err(e) => Err(status(e)),
        }))))
    }
}
