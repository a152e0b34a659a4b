//! The platform's device access service behind its second door: HTTP
//! endpoints an external broker calls, in EMQX's HTTP authentication and
//! authorization format (`{"result": "allow" | "deny"}`).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use platform::device_access::{self, MqttLogin, Principal};
use serde::{Deserialize, Serialize};

use crate::routes::{JsonObject, Source, bearer_token};
use crate::{ApiError, AppState};

/// Other fields EMQX may send are ignored. Configure the broker to send
/// `clientid` and `peerhost`: a device must log in with its device id as
/// client id, and console accounts are throttled by source address.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct AuthenticateRequest {
    /// The client identifier of the CONNECT (`${clientid}`).
    #[serde(default)]
    pub clientid: Option<String>,
    /// The client's address (`${peerhost}`); the broker's own address when absent.
    #[serde(default)]
    pub peerhost: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// SHA-256 of the client certificate, when the broker terminates mTLS.
    #[serde(default)]
    pub certificate_sha256: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct AuthorizeRequest {
    pub username: String,
    pub topic: String,
    /// `publish` or `subscribe`.
    pub action: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Decision {
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_superuser: Option<bool>,
}

fn check_hook_secret(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    // Without a configured secret these endpoints do not exist.
    let Some(expected) = &state.options.broker_hook_secret else {
        return Err(ApiError::NotFound("no such endpoint".into()));
    };
    match bearer_token(headers) {
        Some(given) if device_access::constant_time_eq(given.as_bytes(), expected.as_bytes()) => {
            Ok(())
        }
        _ => Err(ApiError::Unauthorized),
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/mqtt/authenticate",
    tag = "broker",
    description = "may this client connect (EMQX HTTP authentication); needs `Authorization: Bearer` with the broker hook secret",
    request_body = AuthenticateRequest,
    responses(
        (status = 200, description = "allow or deny", body = Decision),
        (status = 400, description = "invalid request", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "wrong hook secret", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "no broker hook secret is configured", body = crate::error::Problem, content_type = "application/problem+json")
    ),
    security(("bearer" = []))
)]
pub(crate) async fn authenticate(
    State(state): State<Arc<AppState>>,
    Source(peer): Source,
    headers: HeaderMap,
    body: JsonObject<AuthenticateRequest>,
) -> Result<Json<Decision>, ApiError> {
    check_hook_secret(&state, &headers)?;
    let request = body.parse()?;
    let source = request
        .peerhost
        .as_deref()
        .and_then(|h| h.parse().ok())
        .unwrap_or(peer);
    let result = device_access::authenticate(
        &state.store,
        &state.options.logins,
        MqttLogin {
            client_id: request.clientid.as_deref().unwrap_or_default(),
            username: request.username.as_deref(),
            password: request.password.as_deref().map(str::as_bytes),
            certificate_sha256: request.certificate_sha256.as_deref(),
            source,
        },
    )
    .await;
    Ok(Json(match result {
        Ok(principal) => Decision {
            result: "allow",
            is_superuser: Some(matches!(principal, Principal::Operator { .. })),
        },
        Err(_) => Decision {
            result: "deny",
            is_superuser: None,
        },
    }))
}

#[utoipa::path(
    post,
    path = "/api/v1/mqtt/authorize",
    tag = "broker",
    description = "may this client publish or subscribe to this topic (EMQX HTTP authorization); needs `Authorization: Bearer` with the broker hook secret",
    request_body = AuthorizeRequest,
    responses(
        (status = 200, description = "allow or deny", body = Decision),
        (status = 400, description = "invalid request", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "wrong hook secret", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "no broker hook secret is configured", body = crate::error::Problem, content_type = "application/problem+json")
    ),
    security(("bearer" = []))
)]
pub(crate) async fn authorize(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: JsonObject<AuthorizeRequest>,
) -> Result<Json<Decision>, ApiError> {
    check_hook_secret(&state, &headers)?;
    let request = body.parse()?;
    let principal = device_access::principal_for(&state.store, &request.username).await?;
    let allowed = match (principal, request.action.as_str()) {
        (Some(p), "publish") => device_access::may_publish(&p, &request.topic),
        (Some(p), "subscribe") => device_access::may_subscribe(&p, &request.topic),
        (_, "publish" | "subscribe") => false,
        (_, other) => {
            return Err(ApiError::field(
                "action",
                format!("{other:?} is not publish or subscribe"),
            ));
        }
    };
    Ok(Json(Decision {
        result: if allowed { "allow" } else { "deny" },
        is_superuser: None,
    }))
}
