//! Webhook deliveries on the wire (`GET /jobs/{id}/webhooks`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::JobStatus;

/// One webhook delivery: one state change of the job to one URL, with its attempts so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WebhookDelivery {
    pub url: String,
    /// The same on every attempt (the `Warden-Event-Id` header): receivers de-duplicate on it.
    pub event_id: String,
    /// The status the job changed to, as the delivered event says.
    pub job_status: Option<JobStatus>,
    pub attempts: u32,
    pub delivered: bool,
    /// Every allowed attempt failed: no more will be made.
    pub gave_up: bool,
    /// The HTTP status of the last attempt (absent: no answer).
    pub last_status: Option<u16>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    pub created_at: String,
    pub delivered_at: Option<String>,
    /// When the next attempt is due, while one is.
    pub next_attempt_at: Option<String>,
}

/// `GET /jobs/{id}/webhooks` answer: oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WebhooksResponse {
    pub job_id: String,
    pub deliveries: Vec<WebhookDelivery>,
}
