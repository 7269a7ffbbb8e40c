//! Who is calling: a bearer token checked against the store on every request (so a revocation
//! holds at once on every replica), or a trusted caller on loopback where the configuration
//! allows it. The answer is a [`Caller`]: a tenant and scopes, which the service checks.

pub mod token;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use warden_api::ErrorCode;
use warden_core::Config;
use warden_store::{AuditEntry, Store, now_millis};

use crate::service::{DEFAULT_TENANT, ServiceError};

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Get and list jobs, read logs and artifacts, list job types.
    Read,
    Submit,
    Cancel,
    /// Tokens, the audit log, every tenant's jobs.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Read, Scope::Submit, Scope::Cancel, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Submit => "submit",
            Scope::Cancel => "cancel",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// A list of scope names, each known and none twice.
    pub fn parse_list(names: &[String]) -> Result<Vec<Scope>, String> {
        let mut out = Vec::new();
        for n in names {
            let s = Scope::parse(n).ok_or_else(|| {
                format!(
                    "unknown scope {:?}; scopes are read, submit, cancel, admin",
                    n.chars().take(40).collect::<String>()
                )
            })?;
            if out.contains(&s) {
                return Err(format!("scope {n:?} is listed twice"));
            }
            out.push(s);
        }
        if out.is_empty() {
            return Err("a token needs at least one scope".into());
        }
        out.sort();
        Ok(out)
    }
}

/// The caller of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    pub tenant: String,
    pub scopes: Vec<Scope>,
    /// `None` for a trusted loopback caller.
    pub token_id: Option<String>,
    pub client: Option<SocketAddr>,
}

impl Caller {
    /// A trusted loopback caller (`auth.loopback_trusted`), and tests of the service itself.
    pub fn trusted(client: Option<SocketAddr>) -> Caller {
        Caller {
            tenant: DEFAULT_TENANT.to_string(),
            scopes: Scope::ALL.to_vec(),
            token_id: None,
            client,
        }
    }

    /// Admin tokens act on every tenant; others only on their own.
    pub fn is_admin(&self) -> bool {
        self.scopes.contains(&Scope::Admin)
    }

    pub fn has(&self, scope: Scope) -> bool {
        self.is_admin() || self.scopes.contains(&scope)
    }

    /// Refuses the request (403) unless the caller holds `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), ServiceError> {
        if self.has(scope) {
            Ok(())
        } else {
            Err(ServiceError::new(
                ErrorCode::Forbidden,
                format!(
                    "this token lacks the {:?} scope (it has: {})",
                    scope.as_str(),
                    self.scopes
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ))
        }
    }

    /// Whether a job of `tenant` is visible to this caller; others' jobs answer 404.
    pub fn sees(&self, tenant: &str) -> bool {
        self.is_admin() || self.tenant == tenant
    }

    /// An audit entry for this caller.
    pub fn audit(&self, action: &str, target: Option<String>, outcome: &str) -> AuditEntry {
        AuditEntry {
            at: now_millis(),
            action: action.into(),
            tenant: Some(self.tenant.clone()),
            token_id: self.token_id.clone(),
            client: self.client.map(|c| c.to_string()),
            target,
            outcome: outcome.into(),
            detail: None,
        }
    }
}

/// Checks tokens and rates.
pub struct Authenticator {
    store: Arc<dyn Store>,
    config: Arc<Config>,
    limiter: DefaultKeyedRateLimiter<String>,
}

impl Authenticator {
    pub fn new(store: Arc<dyn Store>, config: Arc<Config>) -> Authenticator {
        let rate = config.auth.rate_limit;
        let per_second = NonZeroU32::new(rate.per_second.get().min(u32::MAX as u64) as u32)
            .unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(rate.burst.get().min(u32::MAX as u64) as u32)
            .unwrap_or(NonZeroU32::MIN);
        Authenticator {
            store,
            config,
            limiter: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
        }
    }

    /// The caller of a request with this `Authorization` header value from `client`; `target`
    /// (`GET /jobs`, a gRPC method) names the request in the audit entry of a refusal.
    pub async fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        client: Option<SocketAddr>,
        target: &str,
    ) -> Result<Caller, ServiceError> {
        self.authenticate_addressed(authorization, client, target, true)
            .await
    }

    /// [`authenticate`](Self::authenticate) for an HTTP request: `to_loopback` says whether
    /// its `Host` names this machine's loopback. A request without a token is trusted
    /// (`auth.loopback_trusted`) only then, so a page whose name an attacker rebinds to
    /// 127.0.0.1 (DNS rebinding) cannot act as the trusted local caller.
    pub async fn authenticate_addressed(
        &self,
        authorization: Option<&[u8]>,
        client: Option<SocketAddr>,
        target: &str,
        to_loopback: bool,
    ) -> Result<Caller, ServiceError> {
        let result = self.check(authorization, client, to_loopback).await;
        if let Err(e) = &result {
            let entry = AuditEntry {
                at: now_millis(),
                action: "refused".into(),
                tenant: None,
                token_id: authorization
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| h.strip_prefix("Bearer "))
                    .and_then(|t| token::id_of(t.trim()))
                    .map(str::to_string),
                client: client.map(|c| c.to_string()),
                target: Some(target.chars().take(200).collect()),
                outcome: e.code.http_status().to_string(),
                detail: Some(e.message.clone()),
            };
            if let Err(err) = self.store.append_audit(vec![entry]).await {
                tracing::error!(error = %err, "could not write the audit entry of a refusal");
            }
        }
        result
    }

    async fn check(
        &self,
        authorization: Option<&[u8]>,
        client: Option<SocketAddr>,
        to_loopback: bool,
    ) -> Result<Caller, ServiceError> {
        let unauthenticated = |message: &str| {
            let mut e = ServiceError::new(ErrorCode::Unauthenticated, message);
            e.www_authenticate = true;
            e
        };
        let Some(header) = authorization else {
            if self.config.auth.loopback_trusted && client.is_some_and(|c| c.ip().is_loopback()) {
                if !to_loopback {
                    return Err(unauthenticated(
                        "a request without a token is trusted only when it is addressed to \
                         localhost, 127.0.0.1 or [::1] (its Host header names another name): \
                         send `Authorization: Bearer <token>`",
                    ));
                }
                return Ok(Caller::trusted(client));
            }
            return Err(unauthenticated(
                "this request needs a token: send `Authorization: Bearer <token>` (create one \
                 with `warden token create`)",
            ));
        };
        let token = std::str::from_utf8(header)
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| unauthenticated("the Authorization header must be `Bearer <token>`"))?;
        let id = token::id_of(token).ok_or_else(|| {
            unauthenticated(
                "the bearer token is malformed: tokens look like wdn_<16 hex>_<43 base64url>",
            )
        })?;
        let record = self
            .store
            .token(id)
            .await?
            .filter(|r| token::matches(token, &r.hash))
            .ok_or_else(|| unauthenticated("the bearer token is not valid"))?;
        let now = now_millis();
        if record.revoked_at.is_some() {
            return Err(unauthenticated(&format!("token {id} has been revoked")));
        }
        if let Some(exp) = record.expires_at
            && exp <= now
        {
            return Err(unauthenticated(&format!(
                "token {id} expired at {}",
                warden_api::rfc3339(exp)
            )));
        }
        let scopes = Scope::parse_list(&record.scopes)
            .map_err(|e| ServiceError::internal("token record", e))?;
        if let Err(not_until) = self.limiter.check_key(&record.id) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let mut e = ServiceError::new(
                ErrorCode::RateLimited,
                format!(
                    "token {id} is over its rate limit ({} requests/s, burst {}); slow down",
                    self.config.auth.rate_limit.per_second.get(),
                    self.config.auth.rate_limit.burst.get()
                ),
            );
            e.retry_after = Some(wait.max(Duration::from_secs(1)));
            return Err(e);
        }
        Ok(Caller {
            tenant: record.tenant,
            scopes,
            token_id: Some(record.id),
            client,
        })
    }
}

/// Whether a request's `Host` (or, without one, its URI's authority) names the loopback:
/// `localhost` or a loopback address, with or without a port. No name at all counts as
/// loopback: only a browser can be made to rebind a name, and a browser always sends one.
pub fn addressed_to_loopback(host: Option<&str>) -> bool {
    let Some(host) = host else {
        return true;
    };
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod loopback_host_tests {
    use super::addressed_to_loopback;

    #[test]
    fn only_loopback_names_are_loopback() {
        for host in [
            "127.0.0.1:8080",
            "127.0.0.1",
            "localhost:1",
            "LOCALHOST",
            "[::1]:8080",
            "[::1]",
            "127.9.9.9",
        ] {
            assert!(addressed_to_loopback(Some(host)), "{host}");
        }
        for host in [
            "evil.example:8080",
            "127.0.0.1.evil.example",
            "localhost.evil.example:80",
            "10.0.0.1:8080",
            "[::2]:80",
            "",
        ] {
            assert!(!addressed_to_loopback(Some(host)), "{host}");
        }
        assert!(addressed_to_loopback(None));
    }
}
