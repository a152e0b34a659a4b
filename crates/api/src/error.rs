//! One error type for every handler, rendered as problem+json; internal
//! causes are logged, not shown.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// A field that failed validation.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

// The problem responses most operations share, named once for the OpenAPI
// document (`response = …` in a path); never built, only described.
macro_rules! problem_response {
    ($name:ident, $description:literal) => {
        #[doc = $description]
        #[derive(utoipa::ToResponse)]
        #[response(content_type = "application/problem+json")]
        #[allow(dead_code)]
        pub struct $name(Problem);
    };
}
problem_response!(BadRequest, "invalid request; `errors` names each field");
problem_response!(Unauthenticated, "not logged in");
problem_response!(
    NotAllowed,
    "the caller's role may not do this, or a missing CSRF token"
);
problem_response!(NotInScope, "no such object in the caller's scope");
problem_response!(StateConflict, "conflicts with the current state");

#[derive(Debug)]
pub enum ApiError {
    Unauthorized,
    Forbidden(String),
    NotFound(String),
    Conflict(String),
    /// Too many failed logins; retry after this many seconds.
    TooManyAttempts(u64),
    /// Too many logins at once (the password pool is full); retry shortly.
    Busy,
    BadRequest {
        detail: String,
        errors: Vec<FieldError>,
    },
    /// The body is larger than this operation takes.
    TooLarge(String),
    Internal(String),
}

/// An RFC 7807 problem document (`application/problem+json`).
#[derive(Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The fields that failed validation, each with its message.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

impl ApiError {
    pub fn bad_request(detail: impl Into<String>) -> Self {
        ApiError::BadRequest {
            detail: detail.into(),
            errors: Vec::new(),
        }
    }

    pub fn field(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        ApiError::BadRequest {
            detail: format!("{field}: {message}"),
            errors: vec![FieldError {
                field: field.to_owned(),
                message,
            }],
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind, title, detail, errors) = match &self {
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Not logged in",
                "log in or send a bearer token".to_owned(),
                &[][..],
            ),
            ApiError::Forbidden(d) => (
                StatusCode::FORBIDDEN,
                "forbidden",
                "Forbidden",
                d.clone(),
                &[][..],
            ),
            ApiError::NotFound(d) => (
                StatusCode::NOT_FOUND,
                "not-found",
                "Not found",
                d.clone(),
                &[][..],
            ),
            ApiError::Conflict(d) => (
                StatusCode::CONFLICT,
                "conflict",
                "Conflict",
                d.clone(),
                &[][..],
            ),
            ApiError::TooLarge(d) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-large",
                "Too large",
                d.clone(),
                &[][..],
            ),
            ApiError::TooManyAttempts(secs) => (
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-attempts",
                "Too many failed logins",
                format!("try again in {secs} s"),
                &[][..],
            ),
            ApiError::Busy => (
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "Too many logins at once",
                "try again in a few seconds".to_owned(),
                &[][..],
            ),
            ApiError::BadRequest { detail, errors } => (
                StatusCode::BAD_REQUEST,
                "invalid-request",
                "Invalid request",
                detail.clone(),
                errors.as_slice(),
            ),
            ApiError::Internal(cause) => {
                tracing::error!(%cause, "request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "Internal error",
                    "the server could not complete the request; it is logged".to_owned(),
                    &[][..],
                )
            }
        };
        let body = Problem {
            kind: format!("https://telemark.dev/problems/{kind}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail,
            errors: errors.to_vec(),
        };
        let json = serde_json::to_vec(&body).unwrap_or_default();
        let mut response = (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            json,
        )
            .into_response();
        let retry_after = match self {
            ApiError::TooManyAttempts(secs) => Some(secs),
            ApiError::Busy => Some(2),
            _ => None,
        };
        if let Some(secs) = retry_after
            && let Ok(v) = header::HeaderValue::from_str(&secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        response
    }
}

impl From<store::StoreError> for ApiError {
    fn from(e: store::StoreError) -> Self {
        use store::StoreError as S;
        match e {
            S::NotFound(what) => ApiError::NotFound(what),
            S::Conflict(what) => ApiError::Conflict(format!("{what} already exists")),
            S::Invalid(detail) => ApiError::bad_request(detail),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<platform::accounts::AccountError> for ApiError {
    fn from(e: platform::accounts::AccountError) -> Self {
        use platform::accounts::AccountError as A;
        match e {
            A::BadCredentials => ApiError::Unauthorized,
            A::Busy => ApiError::Busy,
            A::Invalid(detail) => ApiError::bad_request(detail),
            A::Store(s) => s.into(),
        }
    }
}

impl From<platform::import::ImportError> for ApiError {
    fn from(e: platform::import::ImportError) -> Self {
        use platform::import::ImportError as I;
        match e {
            I::Store(s) => s.into(),
            other => ApiError::bad_request(other.to_string()),
        }
    }
}

impl From<platform::licensing::LicenseOpError> for ApiError {
    fn from(e: platform::licensing::LicenseOpError) -> Self {
        use platform::licensing::LicenseOpError as L;
        match e {
            L::Invalid(detail) => ApiError::Conflict(detail),
            L::Field { field, message } => ApiError::field(field, message),
            L::Damaged(what) => ApiError::Internal(what.to_owned()),
            L::Store(s) => s.into(),
        }
    }
}

impl From<platform::device_certificates::CertificateError> for ApiError {
    fn from(e: platform::device_certificates::CertificateError) -> Self {
        use platform::device_certificates::CertificateError as C;
        match e {
            C::BadRequest(m) => ApiError::field("csr_pem", m),
            C::BadCertificate(m) => ApiError::field("certificate_pem", m),
            C::Signing(m) => ApiError::Internal(m),
            C::Store(s) => s.into(),
        }
    }
}

impl From<platform::tasks::TaskError> for ApiError {
    fn from(e: platform::tasks::TaskError) -> Self {
        use platform::tasks::TaskError as T;
        match e {
            T::Field {
                field: "state",
                message,
            } => ApiError::Conflict(message),
            T::Field { field, message } => ApiError::field(field, message),
            T::Store(s) => s.into(),
        }
    }
}

impl From<platform::remote::RemoteError> for ApiError {
    fn from(e: platform::remote::RemoteError) -> Self {
        use platform::remote::RemoteError as R;
        match e {
            R::Forbidden(m) => ApiError::Forbidden(m),
            R::NotFound(m) => ApiError::NotFound(m),
            R::Field { field, message } => ApiError::field(field, message),
            R::Conflict(m) => ApiError::Conflict(m),
            R::Task(t) => t.into(),
            R::Store(s) => s.into(),
            R::Bastion(m) => ApiError::Internal(m),
        }
    }
}

impl From<platform::firmware::FirmwareError> for ApiError {
    fn from(e: platform::firmware::FirmwareError) -> Self {
        use platform::firmware::FirmwareError as F;
        match e {
            F::Field {
                field: "state",
                message,
            } => ApiError::Conflict(message),
            F::Field { field, message } => ApiError::field(field, message),
            F::TooLarge(limit) => {
                ApiError::TooLarge(format!("an image is at most {limit} bytes here"))
            }
            F::Interrupted(m) => ApiError::bad_request(format!("the upload broke off: {m}")),
            F::Io(m) => ApiError::Internal(m),
            F::Store(s) => s.into(),
        }
    }
}

impl From<platform::ddi::DdiError> for ApiError {
    fn from(e: platform::ddi::DdiError) -> Self {
        use platform::ddi::DdiError as D;
        match e {
            D::Unauthorized(_) => ApiError::Unauthorized,
            D::NotFound(what) => ApiError::NotFound(what),
            D::Invalid(detail) => ApiError::bad_request(detail),
            D::Store(s) => s.into(),
        }
    }
}
