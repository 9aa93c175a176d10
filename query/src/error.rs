//! The one error type of the HTTP API: each kind maps to a status and `{"error": ...}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use serde_json::json;

/// An error answered to an HTTP client. Messages never include internals such as paths.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    NotFoundMsg(String),
    #[error("starting up: the write-ahead log is being replayed")]
    NotReady,
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    QueryTooLarge(String),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    QueryFailed(String),
    #[error("internal error")]
    Internal,
}

impl ApiError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound | ApiError::NotFoundMsg(_) => StatusCode::NOT_FOUND,
            ApiError::NotReady | ApiError::ShuttingDown | ApiError::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::QueryTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::QueryFailed(_) | ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<talo_engine::Error> for ApiError {
    fn from(e: talo_engine::Error) -> Self {
        use talo_engine::Error as E;
        match e {
            E::InvalidName { .. } | E::Config(_) => ApiError::BadRequest(e.to_string()),
            E::ShuttingDown => ApiError::ShuttingDown,
            E::WalUnavailable(_) | E::Io { .. } => {
                tracing::error!(error = %e, "write failed");
                ApiError::Unavailable("the write-ahead log cannot be written (disk full?)".into())
            }
            other => {
                tracing::error!(error = %other, "internal error");
                ApiError::Internal
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status(), Json(json!({ "error": self.to_string() }))).into_response()
    }
}

/// The query string parsed into `T` (`axum`'s `Query`), with a malformed, repeated or
/// wrongly typed parameter answered like every other bad request, `400
/// {"error": ...}`, instead of `axum`'s plain-text rejection.
pub(crate) struct Params<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for Params<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|axum::extract::Query(t)| Params(t))
            .map_err(|e| ApiError::BadRequest(e.body_text()))
    }
}

/// One path segment (`axum`'s `Path<String>`), a segment that is not UTF-8 once
/// percent-decoded answered as `400 {"error": ...}`.
pub(crate) struct PathParam(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(p)| PathParam(p))
            .map_err(|e| ApiError::BadRequest(e.body_text()))
    }
}
