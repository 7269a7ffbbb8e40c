//! Accepting a job: its type, params and repository checked against the configuration, a ref
//! resolved to the commit it names now, and the job recorded `queued`.

use warden_api::{ErrorCode, SubmitJobRequest};
use warden_core::repo::{Remote, is_full_sha};
use warden_core::{JobId, JobType, validate_params};
use warden_repo::RepoError;
use warden_store::{Handed, JobRecord, NewJob, SubmitOutcome, ToolBundleRef, now_millis};
use warden_worker::SlotOffer;

use super::{JobService, ServiceError};
use crate::auth::{Caller, Scope};

fn invalid(code: ErrorCode, message: impl Into<String>) -> ServiceError {
    ServiceError::new(code, message)
}

/// Treats `""` like an absent optional field: some clients send every field.
fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.is_empty())
}

impl JobService {
    /// Records a new job (`true`), or returns the earlier job of an idempotent replay (`false`).
    pub async fn submit(
        &self,
        caller: &Caller,
        req: SubmitJobRequest,
    ) -> Result<(JobRecord, bool), ServiceError> {
        match self.submit_as(caller, req).await {
            Err(e) if matches!(e.code, ErrorCode::Forbidden | ErrorCode::QueueFull) => {
                Err(self.denied(caller, "submit", e).await)
            }
            other => other,
        }
    }

    async fn submit_as(
        &self,
        caller: &Caller,
        mut req: SubmitJobRequest,
    ) -> Result<(JobRecord, bool), ServiceError> {
        caller.require(Scope::Submit)?;
        if !self.accepting.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(invalid(
                ErrorCode::ShuttingDown,
                "warden is shutting down; retry later",
            ));
        }
        let Some(tenant) = self.config.tenant(&caller.tenant) else {
            return Err(invalid(
                ErrorCode::Forbidden,
                format!(
                    "tenant {:?} is not configured on this server (tenants:)",
                    caller.tenant
                ),
            ));
        };
        let inline_argv = inline_command(&caller.tenant, &tenant, &mut req)?;
        let job_type = self.submitted_type(&req.job_type)?;
        if !tenant.may_use_job_type(&req.job_type) {
            return Err(invalid(
                ErrorCode::Forbidden,
                format!(
                    "tenant {:?} may not use job type {:?}",
                    caller.tenant, req.job_type
                ),
            ));
        }
        validate_params(&req.job_type, &job_type.allowed_params, &req.params).map_err(|e| {
            let code = match e {
                warden_core::ParamError::Unknown { .. } => ErrorCode::UnknownParam,
                _ => ErrorCode::InvalidParam,
            };
            invalid(code, e.to_string())
        })?;
        if job_type.kind == warden_core::config::JobKind::ReviewBundle {
            warden_core::config::check_review_params(&req.params)
                .map_err(|e| invalid(ErrorCode::InvalidParam, e))?;
        }
        // Checked before a ref is resolved or an image pinned: a mistake costs no network call.
        let tool_bundle = self
            .tool_bundle(
                job_type,
                non_empty(req.tool_bundle),
                non_empty(req.tool_env_var),
            )
            .await?;
        let repo_name = non_empty(req.repo_name);
        let remote_url = non_empty(req.remote_url);
        let sha = non_empty(req.sha);
        let git_ref = non_empty(req.git_ref);
        if job_type.requires_repo && repo_name.is_none() {
            return Err(invalid(
                ErrorCode::RepoRequired,
                format!(
                    "job type {:?} needs repo_name (and sha or ref)",
                    req.job_type
                ),
            ));
        }
        let sha = match &repo_name {
            None if remote_url.is_some() || sha.is_some() || git_ref.is_some() => {
                return Err(invalid(
                    ErrorCode::InvalidRequest,
                    "remote_url, sha and ref need repo_name",
                ));
            }
            None => None,
            Some(name) => {
                if !tenant.may_use_repo(name) {
                    return Err(invalid(
                        ErrorCode::Forbidden,
                        format!(
                            "tenant {:?} may not use repository {:?}",
                            caller.tenant,
                            name.chars().take(80).collect::<String>()
                        ),
                    ));
                }
                let remote = self
                    .config
                    .repo_remote(&req.job_type, name, remote_url.as_deref())
                    .map_err(|e| {
                        let code = if e.is_malformed() {
                            ErrorCode::InvalidRequest
                        } else {
                            ErrorCode::RepoNotAllowed
                        };
                        invalid(code, e.to_string())
                    })?;
                Some(self.pin(&remote, sha, git_ref.as_deref()).await?)
            }
        };
        // Pinned like a ref to a sha: the job runs in what the tag named now, wherever and
        // whenever it runs.
        let image = match &job_type.image {
            Some(r) => {
                let digest = self.images.resolve(r).await.map_err(|e| {
                    invalid(
                        ErrorCode::ImageUnavailable,
                        format!("could not resolve the job type's image {r}: {e}"),
                    )
                })?;
                Some(pinned_image(r, &digest))
            }
            None => None,
        };
        let idempotency_key = non_empty(req.idempotency_key);
        if let Some(key) = &idempotency_key
            && (key.len() > 255 || key.chars().any(char::is_control))
        {
            return Err(invalid(
                ErrorCode::InvalidRequest,
                "idempotency_key must be at most 255 bytes without control characters",
            ));
        }
        let callback_url = match non_empty(req.callback_url) {
            None => None,
            Some(url) => {
                let checked = match &self.config.events.webhooks {
                    Some(hooks) => hooks.check_callback(&url),
                    None => Err("this server delivers no webhooks (no events.webhooks)".into()),
                };
                checked.map_err(|m| invalid(ErrorCode::CallbackNotAllowed, m))?;
                Some(url)
            }
        };
        let id = JobId::new();
        let new = NewJob {
            tool_bundle,
            callback_url,
            inline_argv,
            image,
            max_queued: tenant.max_queued.map(|m| m.get()),
            id,
            tenant: caller.tenant.clone(),
            job_type: req.job_type,
            repo_name,
            remote_url,
            sha,
            git_ref,
            params: req.params,
            idempotency_key,
            max_attempts: self.config.max_attempts.get() as u32,
            unsafe_fallback: self.unsafe_fallback,
            created_at: now_millis(),
            audit: Some(caller.audit("submit", Some(id.to_string()), "ok")),
        };
        let (outcome, handed) = match self.workers.as_ref().and_then(|w| w.offer()) {
            Some(slot) => self.submit_to(slot, new).await?,
            None => (self.store.submit(new).await?, None),
        };
        let created = matches!(outcome, SubmitOutcome::Created(_));
        // Handed to a slot, it is no longer queued; otherwise someone must look.
        if created && handed != Some(id) {
            self.job_queued();
        }
        let job = match outcome {
            SubmitOutcome::Created(j) | SubmitOutcome::Existing(j) => j,
        };
        Ok((job, created))
    }

    /// Submits with an idle slot's claim in the same transaction and hands the slot what it
    /// claimed (the fair pick: usually this job); returns which job it was handed. The embedded
    /// store hands it over on its own thread as the transaction commits, so the slot starts
    /// beside this answer, not after it. On a task of its own: a caller gone mid-request must
    /// not strand a job claimed for a slot never told (a store may hand it over on this side).
    async fn submit_to(
        &self,
        slot: SlotOffer,
        new: NewJob,
    ) -> Result<(SubmitOutcome, Option<JobId>), ServiceError> {
        let store = self.store.clone();
        let task = tokio::spawn(async move {
            let to = slot.claim().clone();
            let hand: warden_store::Hand = Box::new(move |claimed| slot.hand(claimed));
            let (outcome, handed) = store.submit_and_hand(new, &to, now_millis(), hand).await?;
            match handed {
                Handed::Nothing => Ok::<_, warden_store::StoreError>((outcome, None)),
                Handed::Taken(id) => Ok((outcome, Some(id))),
                Handed::Refused(claimed) => {
                    // The pool stopped meanwhile: back to the queue.
                    if let Err(e) = store.release(&claimed.lease).await {
                        let id = claimed.job.id;
                        tracing::warn!(job = %id, error = %e, "could not give the job back to the queue");
                    }
                    Ok((outcome, None))
                }
            }
        });
        match task.await {
            Ok(submitted) => submitted.map_err(ServiceError::from),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// The bundle a submission names, if this server knows it (`tool_bundles:`), and the
    /// variable that will point at it.
    async fn tool_bundle(
        &self,
        job_type: &JobType,
        bundle: Option<String>,
        env_var: Option<String>,
    ) -> Result<Option<ToolBundleRef>, ServiceError> {
        let Some(bundle) = bundle else {
            return match env_var {
                Some(_) => Err(invalid(
                    ErrorCode::InvalidRequest,
                    "tool_env_var names the variable of a tool_bundle: give tool_bundle too",
                )),
                None => Ok(None),
            };
        };
        let sha256 = warden_worker::tool_bundles::parse_digest(&bundle)
            .map_err(|m| invalid(ErrorCode::InvalidRequest, m))?;
        let env_var = env_var.unwrap_or_else(|| job_type.tool_env_var.clone());
        job_type
            .check_tool_env_var(&env_var)
            .map_err(|m| invalid(ErrorCode::InvalidRequest, m))?;
        let Some(dir) = self.config.tool_bundles.clone() else {
            return Err(invalid(
                ErrorCode::ToolBundleUnknown,
                "this server knows no tool bundles (no tool_bundles: directory is configured)",
            ));
        };
        let found = warden_worker::tool_bundles::ToolBundles::new(dir)
            .find_async(sha256.clone())
            .await
            .map_err(|e| ServiceError::internal("reading the tool_bundles directory", e))?;
        if found.is_none() {
            return Err(invalid(
                ErrorCode::ToolBundleUnknown,
                format!(
                    "no bundle in this server's tool_bundles directory has SHA-256 {sha256}: \
                     the operator places bundles written by `warden tools bundle` there"
                ),
            ));
        }
        Ok(Some(ToolBundleRef { sha256, env_var }))
    }

    fn submitted_type(&self, name: &str) -> Result<&JobType, ServiceError> {
        self.config.job_type(name).ok_or_else(|| {
            let known: Vec<&str> = self.config.job_types.keys().map(|k| k.0.as_str()).collect();
            invalid(
                ErrorCode::UnknownJobType,
                format!(
                    "unknown job_type {:?}; configured job types: {}",
                    name.chars().take(80).collect::<String>(),
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            )
        })
    }

    /// The commit a repository job runs at: the full sha it names, or its ref resolved once,
    /// here, so that the job runs at that commit however the ref moves later.
    async fn pin(
        &self,
        remote: &Remote,
        sha: Option<String>,
        git_ref: Option<&str>,
    ) -> Result<String, ServiceError> {
        if let Some(s) = &sha
            && !is_full_sha(s)
        {
            return Err(invalid(
                ErrorCode::InvalidRequest,
                format!(
                    "sha must be a full commit id: 40 (SHA-1) or 64 (SHA-256) lowercase hex \
                     digits{}",
                    if s.len() < 40 && !s.is_empty() {
                        "; to run at a branch or tag, send it as \"ref\""
                    } else {
                        ""
                    }
                ),
            ));
        }
        match (sha, git_ref) {
            (Some(_), Some(_)) => Err(invalid(
                ErrorCode::InvalidRequest,
                "give sha or ref, not both",
            )),
            (None, None) => Err(invalid(
                ErrorCode::InvalidRequest,
                "a job on a repository needs sha (the full commit id) or ref (a branch or tag, \
                 resolved now)",
            )),
            (Some(sha), None) => Ok(sha),
            (None, Some(name)) => self
                .repos
                .mirrors
                .resolve_ref(remote, name)
                .await
                .map_err(|e| match e {
                    RepoError::InvalidRef(m) => invalid(ErrorCode::InvalidRef, m),
                    other => invalid(
                        ErrorCode::RepoUnavailable,
                        format!("could not resolve ref {name:?}: {other}"),
                    ),
                }),
        }
    }
}

/// `REF@sha256:…`: the reference as configured (without a digest it may already carry) and
/// the digest it resolved to.
fn pinned_image(r: &warden_core::image::ImageRef, digest: &warden_core::image::Digest) -> String {
    let text = r.to_string();
    let name = match text.rsplit_once('@') {
        Some((name, _)) if r.pinned().is_some() => name.to_string(),
        _ => text,
    };
    format!("{name}@{digest}")
}

/// Most arguments and bytes an inline command may have.
const INLINE_MAX_ARGS: usize = 256;
const INLINE_MAX_BYTES: usize = 64 * 1024;

/// An inline command's argv, checked against the tenant's policy; the request's job type becomes
/// the policy's. `None` for an ordinary submission.
fn inline_command(
    tenant_name: &str,
    tenant: &warden_core::config::TenantConfig,
    req: &mut SubmitJobRequest,
) -> Result<Option<Vec<String>>, ServiceError> {
    if req.command.is_empty() {
        return Ok(None);
    }
    let Some(policy) = &tenant.inline else {
        return Err(invalid(
            ErrorCode::Forbidden,
            format!(
                "tenant {tenant_name:?} may not submit inline commands (its policy has no \
                 `inline: {{job_type: ...}}`); submit a job type instead"
            ),
        ));
    };
    if !req.job_type.is_empty() && req.job_type != policy.job_type {
        return Err(invalid(
            ErrorCode::InvalidRequest,
            format!(
                "inline commands of tenant {tenant_name:?} run as job type {:?}; leave job_type \
                 empty or give that one",
                policy.job_type
            ),
        ));
    }
    let argv = std::mem::take(&mut req.command);
    let bytes: usize = argv.iter().map(String::len).sum();
    if argv[0].is_empty()
        || argv.len() > INLINE_MAX_ARGS
        || bytes > INLINE_MAX_BYTES
        || argv.iter().any(|a| a.contains('\0'))
    {
        return Err(invalid(
            ErrorCode::InvalidRequest,
            format!(
                "command must name a program, with at most {INLINE_MAX_ARGS} arguments and \
                 {INLINE_MAX_BYTES} bytes in all, without NUL bytes"
            ),
        ));
    }
    req.job_type = policy.job_type.clone();
    Ok(Some(argv))
}

#[cfg(test)]
mod tests {
    #[test]
    fn repo_urls_normalise() {
        use warden_core::repo::normalize_repo_url;
        assert_eq!(
            normalize_repo_url("https://github.com/pallets/click.git/"),
            normalize_repo_url("https://github.com/pallets/click")
        );
        assert_ne!(
            normalize_repo_url("https://a/x"),
            normalize_repo_url("https://a/y")
        );
    }
}
