//! Tokens, the audit trail and the caller's identity on the wire.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /tokens` body (admin).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    pub tenant: String,
    /// `read`, `submit`, `cancel`, `admin`.
    pub scopes: Vec<String>,
    /// Lifetime in seconds; absent: the token does not expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_s: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A token as listed: never the token itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    pub id: String,
    pub tenant: String,
    pub name: Option<String>,
    pub scopes: Vec<String>,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
}

/// `POST /tokens` answer: the only time the token is shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreateTokenResponse {
    pub token: String,
    #[serde(flatten)]
    pub info: TokenView,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TokensResponse {
    pub tokens: Vec<TokenView>,
}

/// One audit entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditView {
    pub seq: i64,
    pub at: String,
    pub action: String,
    pub tenant: Option<String>,
    pub token_id: Option<String>,
    pub client: Option<String>,
    pub target: Option<String>,
    pub outcome: String,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditResponse {
    pub entries: Vec<AuditView>,
    pub next_cursor: Option<String>,
}

/// `GET /whoami`: the caller as the server sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WhoamiResponse {
    pub tenant: String,
    pub scopes: Vec<String>,
    /// Absent for a trusted loopback caller.
    pub token_id: Option<String>,
}
