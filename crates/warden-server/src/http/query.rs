//! Strict query strings: unknown or repeated parameters are errors, numbers are range-checked.

use std::collections::HashMap;

use warden_api::ErrorCode;

use crate::service::ServiceError;

pub(super) fn parse_query(
    raw: Option<String>,
    allowed: &[&str],
) -> Result<HashMap<String, String>, ServiceError> {
    let mut out = HashMap::new();
    for (k, v) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        if !allowed.contains(&k.as_ref()) {
            return Err(ServiceError::new(
                ErrorCode::InvalidQuery,
                format!(
                    "unknown query parameter {k:?}; allowed: {}",
                    allowed.join(", ")
                ),
            ));
        }
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(ServiceError::new(
                ErrorCode::InvalidQuery,
                format!("query parameter {k:?} given twice"),
            ));
        }
    }
    Ok(out)
}

pub(super) fn query_num<T>(
    q: &HashMap<String, String>,
    name: &str,
    range: std::ops::RangeInclusive<T>,
) -> Result<Option<T>, ServiceError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    let Some(raw) = q.get(name) else {
        return Ok(None);
    };
    match raw.parse::<T>() {
        Ok(v) if range.contains(&v) => Ok(Some(v)),
        _ => Err(ServiceError::new(
            ErrorCode::InvalidQuery,
            format!(
                "{name}={raw:?} is invalid: expected a whole number from {} to {}",
                range.start(),
                range.end()
            ),
        )),
    }
}

pub(super) fn query_bool(q: &HashMap<String, String>, name: &str) -> Result<bool, ServiceError> {
    match q.get(name).map(String::as_str) {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") | Some("") => Ok(true),
        Some(other) => Err(ServiceError::new(
            ErrorCode::InvalidQuery,
            format!("{name}={other:?} is invalid: expected true or false"),
        )),
    }
}
