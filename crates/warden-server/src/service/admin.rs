//! Tokens and the audit trail: admin only.

use warden_api::{
    AuditView, CreateTokenRequest, CreateTokenResponse, ErrorCode, TokenView, WhoamiResponse,
    rfc3339,
};
use warden_core::config::is_valid_tenant;
use warden_store::{AuditFilter, TokenRecord, now_millis};

use super::{JobService, ServiceError};
use crate::auth::{Caller, Scope, token};

/// The longest lifetime a token may be given: ten years.
const MAX_EXPIRY_S: u64 = 10 * 365 * 24 * 3600;

pub fn token_view(t: &TokenRecord) -> TokenView {
    TokenView {
        id: t.id.clone(),
        tenant: t.tenant.clone(),
        name: t.name.clone(),
        scopes: t.scopes.clone(),
        created_at: rfc3339(t.created_at),
        expires_at: t.expires_at.map(rfc3339),
        revoked_at: t.revoked_at.map(rfc3339),
    }
}

fn invalid(message: impl Into<String>) -> ServiceError {
    ServiceError::new(ErrorCode::InvalidRequest, message)
}

impl JobService {
    pub fn whoami(&self, caller: &Caller) -> WhoamiResponse {
        WhoamiResponse {
            tenant: caller.tenant.clone(),
            scopes: caller
                .scopes
                .iter()
                .map(|s| s.as_str().to_string())
                .collect(),
            token_id: caller.token_id.clone(),
        }
    }

    /// Mints a token; the answer is the only place the token ever appears.
    pub async fn create_token(
        &self,
        caller: &Caller,
        req: CreateTokenRequest,
    ) -> Result<CreateTokenResponse, ServiceError> {
        self.authorize(caller, Scope::Admin, "token create").await?;
        let minted = mint_record(&self.config, req)?;
        self.store.create_token(minted.1.clone()).await?;
        self.audit(caller.audit("token.create", Some(minted.1.id.clone()), "ok"))
            .await;
        Ok(CreateTokenResponse {
            token: minted.0,
            info: token_view(&minted.1),
        })
    }

    pub async fn list_tokens(
        &self,
        caller: &Caller,
        tenant: Option<&str>,
    ) -> Result<Vec<TokenView>, ServiceError> {
        self.authorize(caller, Scope::Admin, "token list").await?;
        let tokens = self.store.list_tokens(tenant).await?;
        Ok(tokens.iter().map(token_view).collect())
    }

    pub async fn revoke_token(&self, caller: &Caller, id: &str) -> Result<TokenView, ServiceError> {
        self.authorize(caller, Scope::Admin, "token revoke").await?;
        let Some(t) = self.store.revoke_token(id, now_millis()).await? else {
            return Err(ServiceError::new(
                ErrorCode::NotFound,
                format!(
                    "no token with id {:?}; see `warden token list`",
                    id.chars().take(40).collect::<String>()
                ),
            ));
        };
        self.audit(caller.audit("token.revoke", Some(t.id.clone()), "ok"))
            .await;
        Ok(token_view(&t))
    }

    pub async fn list_audit(
        &self,
        caller: &Caller,
        filter: AuditFilter,
    ) -> Result<(Vec<AuditView>, Option<String>), ServiceError> {
        self.authorize(caller, Scope::Admin, "audit").await?;
        let limit = filter.limit;
        let records = self.store.list_audit(&filter).await?;
        let next = (records.len() == limit as usize)
            .then(|| records.last().map(|r| r.seq.to_string()))
            .flatten();
        let entries = records
            .into_iter()
            .map(|r| AuditView {
                seq: r.seq,
                at: rfc3339(r.entry.at),
                action: r.entry.action,
                tenant: r.entry.tenant,
                token_id: r.entry.token_id,
                client: r.entry.client,
                target: r.entry.target,
                outcome: r.entry.outcome,
                detail: r.entry.detail,
            })
            .collect();
        Ok((entries, next))
    }
}

/// A new token for `req`, checked against the configuration: the token and its record.
pub fn mint_record(
    config: &warden_core::Config,
    req: CreateTokenRequest,
) -> Result<(String, TokenRecord), ServiceError> {
    if !is_valid_tenant(&req.tenant) {
        return Err(invalid(format!(
            "tenant {:?} is invalid: names match ^[a-z0-9][a-z0-9_.-]{{0,63}}$",
            req.tenant.chars().take(80).collect::<String>()
        )));
    }
    if config.tenant(&req.tenant).is_none() {
        return Err(invalid(format!(
            "tenant {:?} is not configured; configured tenants: {}",
            req.tenant,
            config
                .tenants
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let scopes = Scope::parse_list(&req.scopes).map_err(invalid)?;
    if let Some(name) = &req.name
        && (name.is_empty() || name.len() > 128 || name.chars().any(char::is_control))
    {
        return Err(invalid(
            "name must be 1 to 128 bytes without control characters",
        ));
    }
    let now = now_millis();
    let expires_at = match req.expires_in_s {
        None => None,
        Some(s) if (1..=MAX_EXPIRY_S).contains(&s) => Some(now + (s as i64) * 1000),
        Some(s) => {
            return Err(invalid(format!(
                "expires_in_s {s} is out of range: 1..={MAX_EXPIRY_S} (ten years)"
            )));
        }
    };
    let minted = token::mint().map_err(|e| ServiceError::internal("token randomness", e))?;
    let record = TokenRecord {
        id: minted.id,
        tenant: req.tenant,
        name: req.name,
        scopes: scopes.iter().map(|s| s.as_str().to_string()).collect(),
        hash: minted.hash,
        created_at: now,
        expires_at,
        revoked_at: None,
    };
    Ok((minted.token, record))
}
