//! The endpoint's one error shape: `{"error": "..."}` with a fitting
//! status code, whatever went wrong and wherever.
//!
//! Handlers and their steps return [`ApiError`] and use `?`: a
//! [`JobError`] (the job path's errors) or a [`Refusal`] (a decision not
//! taken) converts into it with its status. [`error_response`] is the same
//! answer for code that builds a [`Response`] itself (the guard).

use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Json, Response};

use crate::api::ErrorBody;
use crate::error::JobError;
use crate::mesh::trust::Refusal;

/// An error answer not yet rendered: its status and message.
///
/// Small (unlike a whole [`Response`]), so a handler's steps can return it
/// in a `Result` and hand it up with `?`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The answer's status code.
    pub status: StatusCode,
    /// What went wrong, for a human: the `error` of the JSON body.
    pub message: String,
}

impl ApiError {
    /// An error with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// A `400 Bad Request`.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}

impl From<JobError> for ApiError {
    fn from(e: JobError) -> ApiError {
        ApiError::new(e.status(), e.to_string())
    }
}

impl From<Refusal> for ApiError {
    /// A decision this peer did not take: unsigned or badly signed (401),
    /// signed by a stranger (403), malformed (400), or in conflict with
    /// what the peer holds (409).
    fn from(refusal: Refusal) -> ApiError {
        let status = match refusal {
            Refusal::Unsigned | Refusal::BadSignature => StatusCode::UNAUTHORIZED,
            Refusal::UntrustedKey => StatusCode::FORBIDDEN,
            Refusal::Invalid => StatusCode::BAD_REQUEST,
            Refusal::Full | Refusal::Stale => StatusCode::CONFLICT,
        };
        ApiError::new(status, refusal.to_string())
    }
}

/// The JSON error answer `{"error": message}` with `status`.
pub fn error_response(status: StatusCode, message: impl Into<String>) -> Response {
    ApiError::new(status, message).into_response()
}

/// Any path the router does not know: `404`.
pub(super) async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {}", uri.path()),
    )
}

/// A job path with another method than `POST`: `405`.
pub(super) async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{method} {} is not supported: send jobs with POST",
            uri.path()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_error_is_the_same_json_shape() {
        let resp = ApiError::from(JobError::Busy("full".into())).into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            resp.headers()["content-type"],
            "application/json",
            "{resp:?}"
        );
        let body = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
        assert_eq!(&body[..], br#"{"error":"full"}"#);
        assert_eq!(ApiError::from(Refusal::Stale).status, StatusCode::CONFLICT);
        assert_eq!(
            ApiError::from(Refusal::UntrustedKey).status,
            StatusCode::FORBIDDEN
        );
    }
}
