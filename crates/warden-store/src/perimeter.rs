//! What the store keeps for the perimeter: API tokens (their hashes only) and the audit trail.

use crate::Millis;

/// An API token as stored: never the token itself, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// The public part of the token (`wdn_<id>_<secret>`), unique.
    pub id: String,
    pub tenant: String,
    pub name: Option<String>,
    /// Scope names (`read`, `submit`, `cancel`, `admin`).
    pub scopes: Vec<String>,
    /// SHA-256 of the whole token.
    pub hash: Vec<u8>,
    pub created_at: Millis,
    pub expires_at: Option<Millis>,
    pub revoked_at: Option<Millis>,
}

/// One line of the audit trail, as written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuditEntry {
    pub at: Millis,
    /// `submit`, `cancel`, `token.create`, `token.revoke`, `secret.use`, `artifact.download`,
    /// `refused`, ...
    pub action: String,
    pub tenant: Option<String>,
    pub token_id: Option<String>,
    /// The caller's address (`ip:port`), when known.
    pub client: Option<String>,
    /// What the action was on: a job id, a token id, a secret name, an artifact path.
    pub target: Option<String>,
    /// `ok`, or the HTTP status a refusal answered (`401`, `403`, `404`, `429`).
    pub outcome: String,
    pub detail: Option<String>,
}

/// An audit entry as read back: with its sequence number (increasing, the listing cursor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub seq: i64,
    pub entry: AuditEntry,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub tenant: Option<String>,
    pub action: Option<String>,
    /// Entries older than this sequence number (the cursor of the previous page).
    pub before: Option<i64>,
    pub limit: u32,
}
