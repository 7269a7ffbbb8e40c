//! A JSON request body whose every failure is a JSON error with the right 4xx.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;
use warden_api::ErrorCode;

use crate::service::ServiceError;

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// A JSON body whose every failure is a JSON error with the right 4xx.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ServiceError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ServiceError> {
        if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
            let ct = ct.to_str().unwrap_or("");
            let essence = ct.split(';').next().unwrap_or("").trim();
            if !essence.eq_ignore_ascii_case("application/json") {
                return Err(ServiceError::new(
                    ErrorCode::UnsupportedMediaType,
                    format!("content-type {ct:?} is not supported; send application/json"),
                ));
            }
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ServiceError::new(
                    ErrorCode::PayloadTooLarge,
                    format!("request body is larger than {MAX_BODY_BYTES} bytes"),
                )
            } else {
                ServiceError::new(
                    ErrorCode::MalformedJson,
                    format!("could not read body: {rejection}"),
                )
            }
        })?;
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| {
            use serde_json::error::Category;
            match e.classify() {
                Category::Syntax | Category::Eof | Category::Io => {
                    ServiceError::new(ErrorCode::MalformedJson, format!("malformed JSON: {e}"))
                }
                Category::Data if e.to_string().starts_with("unknown field") => {
                    ServiceError::new(ErrorCode::UnknownField, e.to_string())
                }
                Category::Data => ServiceError::new(ErrorCode::InvalidRequest, e.to_string()),
            }
        })
    }
}
