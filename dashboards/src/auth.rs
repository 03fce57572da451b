//! Bearer-token checks shared by every API that takes tokens.

use axum::http::{HeaderMap, header};

use crate::ApiError;

/// Accepts the request if its `Authorization: Bearer <token>` header carries one of
/// `accepted`. The comparison does not stop at the first differing byte.
///
/// # Errors
///
/// [`ApiError::Unauthorized`] when the header is missing, malformed or names no accepted token.
pub(crate) fn require_bearer<T: AsRef<str>>(
    headers: &HeaderMap,
    accepted: &[T],
) -> Result<(), ApiError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::Unauthorized(
                "this endpoint needs an `Authorization: Bearer <token>` header".into(),
            )
        })?;
    if accepted
        .iter()
        .any(|t| constant_time_eq(t.as_ref().as_bytes(), presented.as_bytes()))
    {
        Ok(())
    } else {
        Err(ApiError::Unauthorized("token not accepted".into()))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(value).expect("header"),
        );
        h
    }

    #[test]
    fn accepts_only_listed_tokens() {
        let accepted = ["0123456789abcdef", "fedcba9876543210"];
        assert!(require_bearer(&headers("Bearer fedcba9876543210"), &accepted).is_ok());
        for bad in [
            "Bearer 0123456789abcdeX",
            "Bearer 0123",
            "Basic 0123456789abcdef",
            "0123456789abcdef",
        ] {
            assert!(
                matches!(
                    require_bearer(&headers(bad), &accepted),
                    Err(ApiError::Unauthorized(_))
                ),
                "{bad}"
            );
        }
        assert!(require_bearer(&HeaderMap::new(), &accepted).is_err());
    }
}
