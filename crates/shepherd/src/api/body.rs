//! Reading a request body under the configured size limit, with a 413 in the caller's shape.

use axum::body::Body;
use axum::http::{HeaderMap, header};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;

use super::errors::ApiError;

/// The whole body within `within` (`server.client_timeouts.body`: else 408), and 413 as soon
/// as it is known to pass `limit` bytes.
pub async fn read_within(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    within: std::time::Duration,
) -> Result<Bytes, ApiError> {
    tokio::time::timeout(within, read_limited(body, headers, limit))
        .await
        .map_err(|_| ApiError::body_timeout(within))?
}

/// The whole body, or 413 as soon as it is known to pass `limit` bytes.
pub async fn read_limited(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(ApiError::body_too_large(limit));
    }
    let mut body = body;
    let mut first: Option<Bytes> = None;
    let mut rest: Option<BytesMut> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| ApiError::bad_body(&error.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let total = first.as_ref().map_or(0, Bytes::len)
            + rest.as_ref().map_or(0, BytesMut::len)
            + data.len();
        if total > limit {
            return Err(ApiError::body_too_large(limit));
        }
        match (&mut first, &mut rest) {
            (None, _) => first = Some(data),
            (Some(head), None) => {
                let mut joined = BytesMut::with_capacity(declared.unwrap_or(total).max(total));
                joined.extend_from_slice(head);
                joined.extend_from_slice(&data);
                rest = Some(joined);
            }
            (Some(_), Some(joined)) => joined.extend_from_slice(&data),
        }
    }
    Ok(match rest {
        Some(joined) => joined.freeze(),
        None => first.unwrap_or_default(),
    })
}
