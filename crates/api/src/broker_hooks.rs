//! The platform's device access service behind its second door: HTTP
//! endpoints an external broker calls to ask whether a client may connect,
//! publish or subscribe, in the formats real clusters send:
//!
//! - EMQX's HTTP authentication and authorization (`/api/v1/mqtt/authenticate`,
//!   `/authorize`, bearer secret);
//! - rmqtt's `rmqtt-auth-http` (`/api/v1/mqtt/rmqtt/auth`, `/acl`, bearer
//!   secret in its `http_headers`; JSON or form bodies);
//! - VerneMQ's webhooks (`/api/v1/mqtt/vernemq/{secret}`, the hook named by
//!   the `vernemq-hook` header; VerneMQ sends no custom headers, so the
//!   secret is in the endpoint URL);
//! - mosquitto-go-auth's HTTP backend (`/api/v1/mqtt/go-auth/{secret}/user`,
//!   `/superuser`, `/acl`; JSON or form; answers read in its `status` and
//!   `json` response modes).
//!
//! Every format decides with the same rules (`device_access`): a device
//! logs in with its id as client id and its secret, and reaches only its
//! own topics; the platform's own clients log in as `telemark-platform`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
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
    check_secret(state, bearer_token(headers).as_deref())
}

/// The hook secret, from a bearer header or an endpoint's path; compared
/// in constant time.
fn check_secret(state: &AppState, given: Option<&str>) -> Result<(), ApiError> {
    // Without a configured secret these endpoints do not exist.
    let Some(expected) = &state.options.broker_hook_secret else {
        return Err(ApiError::NotFound("no such endpoint".into()));
    };
    match given {
        Some(given) if device_access::constant_time_eq(given.as_bytes(), expected.as_bytes()) => {
            Ok(())
        }
        _ => Err(ApiError::Unauthorized),
    }
}

/// What a broker says of a client at CONNECT, whatever its format.
struct Login<'a> {
    client_id: Option<&'a str>,
    username: Option<&'a str>,
    password: Option<&'a str>,
    certificate_sha256: Option<&'a str>,
    /// The client's address as the broker saw it.
    address: Option<&'a str>,
}

/// Who the client is, if its login holds. Without the client's address
/// the broker's own counts for the login guard.
async fn login(state: &AppState, login: Login<'_>, broker: std::net::IpAddr) -> Option<Principal> {
    let source = login.address.and_then(|h| h.parse().ok()).unwrap_or(broker);
    device_access::authenticate(
        &state.store,
        &state.options.logins,
        MqttLogin {
            client_id: login.client_id.unwrap_or_default(),
            username: login.username,
            password: login.password.map(str::as_bytes),
            certificate_sha256: login.certificate_sha256,
            source,
        },
    )
    .await
    .ok()
}

#[derive(Debug, Clone, Copy)]
enum Access {
    Publish,
    Subscribe,
    /// A message on this topic delivered to the client (Mosquitto checks
    /// it apart from the subscription).
    Read,
}

/// Whether the client logged in as `username` may do `access` on `topic`.
async fn may(
    state: &AppState,
    username: &str,
    access: Access,
    topic: &str,
) -> Result<bool, ApiError> {
    let Some(principal) = state.principals.principal(&state.store, username).await? else {
        return Ok(false);
    };
    Ok(match access {
        Access::Publish => device_access::may_publish(&principal, topic),
        Access::Subscribe | Access::Read => device_access::may_subscribe(&principal, topic),
    })
}

/// A hook's body as a broker sends it: JSON, or a form
/// (`application/x-www-form-urlencoded`, rmqtt's and mosquitto-go-auth's
/// other mode).
pub(crate) struct HookBody<T>(Result<T, ApiError>);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for HookBody<T> {
    type Rejection = std::convert::Infallible;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let form = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        let parsed = match axum::body::Bytes::from_request(req, state).await {
            Err(e) => Err(ApiError::bad_request(e.body_text())),
            Ok(bytes) if form => serde_urlencoded::from_bytes(&bytes)
                .map_err(|e| ApiError::bad_request(format!("form body: {e}"))),
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| ApiError::bad_request(format!("JSON body: {e}"))),
        };
        Ok(HookBody(parsed))
    }
}

/// How long a broker may keep an allowed publish or subscribe: a device's
/// topics are fixed by its model and MAC, so only a deleted device's
/// answer goes stale, and its messages find no device in the ingest.
const ACL_CACHE_SECS: u64 = 300;

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
    let principal = login(
        &state,
        Login {
            client_id: request.clientid.as_deref(),
            username: request.username.as_deref(),
            password: request.password.as_deref(),
            certificate_sha256: request.certificate_sha256.as_deref(),
            address: request.peerhost.as_deref(),
        },
        peer,
    )
    .await;
    Ok(Json(match principal {
        Some(principal) => Decision {
            result: "allow",
            is_superuser: Some(matches!(principal, Principal::Operator { .. })),
        },
        None => Decision {
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
    let access = match request.action.as_str() {
        "publish" => Access::Publish,
        "subscribe" => Access::Subscribe,
        other => {
            return Err(ApiError::field(
                "action",
                format!("{other:?} is not publish or subscribe"),
            ));
        }
    };
    let allowed = may(&state, &request.username, access, &request.topic).await?;
    Ok(Json(Decision {
        result: if allowed { "allow" } else { "deny" },
        is_superuser: None,
    }))
}

// --- rmqtt (rmqtt-auth-http) ------------------------------------------------

/// rmqtt's authentication parameters, named as in the documented
/// `http_auth_req.params = { clientid = "%c", username = "%u", password = "%P", ipaddr = "%a" }`.
#[derive(Debug, Deserialize)]
pub(crate) struct RmqttAuth {
    #[serde(default)]
    clientid: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    ipaddr: Option<String>,
}

/// `http_acl_req.params = { access = "%A", username = "%u", clientid = "%c", ipaddr = "%a", topic = "%t" }`:
/// access 1 subscribe, 2 publish.
#[derive(Debug, Deserialize)]
pub(crate) struct RmqttAcl {
    access: NumberOrText,
    username: String,
    topic: String,
}

/// A number a form sends as text and JSON as a number.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum NumberOrText {
    Number(u64),
    Text(String),
}

impl NumberOrText {
    fn value(&self) -> Option<u64> {
        match self {
            NumberOrText::Number(n) => Some(*n),
            NumberOrText::Text(t) => t.trim().parse().ok(),
        }
    }
}

/// rmqtt: may this client connect. `{"result": "allow" | "deny",
/// "superuser", "acl"}`; a deny is a 200 too (a 4xx would only make rmqtt
/// ask the next plugin).
pub(crate) async fn rmqtt_auth(
    State(state): State<Arc<AppState>>,
    Source(peer): Source,
    headers: HeaderMap,
    HookBody(body): HookBody<RmqttAuth>,
) -> Result<Response, ApiError> {
    check_hook_secret(&state, &headers)?;
    let request = body?;
    let principal = login(
        &state,
        Login {
            client_id: request.clientid.as_deref(),
            username: request.username.as_deref(),
            password: request.password.as_deref(),
            certificate_sha256: None,
            address: request.ipaddr.as_deref(),
        },
        peer,
    )
    .await;
    // The answer carries the client's whole ACL (rmqtt's permission
    // preset), so rmqtt decides publishes and subscribes itself instead of
    // asking `/acl` for each new topic: a device its own tree and nothing
    // else; the platform's clients and operator admins are superusers, as
    // EMQX is told.
    Ok(Json(match principal {
        Some(Principal::Device { topic_prefix, .. }) => serde_json::json!({
            "result": "allow",
            "superuser": false,
            "acl": [
                {"permission": "allow", "action": "all", "topic": format!("{topic_prefix}#")},
                {"permission": "deny", "action": "all", "topic": "#"},
            ],
        }),
        Some(Principal::Operator { .. }) => {
            serde_json::json!({"result": "allow", "superuser": true})
        }
        None => serde_json::json!({"result": "deny", "superuser": false}),
    })
    .into_response())
}

/// rmqtt: may this client publish or subscribe. A text body `allow` or
/// `deny`; an allowed publish may be cached (`X-Cache`, milliseconds).
pub(crate) async fn rmqtt_acl(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    HookBody(body): HookBody<RmqttAcl>,
) -> Result<Response, ApiError> {
    check_hook_secret(&state, &headers)?;
    let request = body?;
    let access = match request.access.value() {
        Some(1) => Access::Subscribe,
        Some(2) => Access::Publish,
        _ => {
            return Err(ApiError::field(
                "access",
                "must be 1 (subscribe) or 2 (publish)",
            ));
        }
    };
    let allowed = may(&state, &request.username, access, &request.topic).await?;
    let text = if allowed { "allow" } else { "deny" };
    let mut response = ([(header::CONTENT_TYPE, "text/plain")], text).into_response();
    if allowed && matches!(access, Access::Publish) {
        response
            .headers_mut()
            .insert("x-cache", header::HeaderValue::from(ACL_CACHE_SECS * 1000));
    }
    Ok(response)
}

// --- VerneMQ (vmq_webhooks) ---------------------------------------------------

/// The fields of `auth_on_register`, `auth_on_publish`, `auth_on_subscribe`
/// and their `_m5` forms that the answer depends on.
#[derive(Debug, Deserialize)]
pub(crate) struct VernemqHook {
    #[serde(default)]
    peer_addr: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    topics: Option<Vec<VernemqTopic>>,
}

#[derive(Debug, Deserialize, Serialize)]
struct VernemqTopic {
    topic: String,
    qos: u8,
}

/// VerneMQ's webhooks, one endpoint for the three auth hooks (the
/// `vernemq-hook` header says which). Allowed publishes and subscribes
/// carry `cache-control: max-age`, which VerneMQ caches; a login is asked
/// every time, so a revoked secret stops at the next connect.
pub(crate) async fn vernemq(
    State(state): State<Arc<AppState>>,
    Path(secret): Path<String>,
    Source(peer): Source,
    headers: HeaderMap,
    HookBody(body): HookBody<VernemqHook>,
) -> Result<Response, ApiError> {
    check_secret(&state, Some(&secret))?;
    let hook = headers
        .get("vernemq-hook")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let request = body?;
    let not_allowed =
        || Json(serde_json::json!({"result": {"error": "not_allowed"}})).into_response();
    let cached = |mut response: Response| {
        if let Ok(value) = header::HeaderValue::from_str(&format!("max-age={ACL_CACHE_SECS}")) {
            response.headers_mut().insert(header::CACHE_CONTROL, value);
        }
        response
    };
    let ok = || Json(serde_json::json!({"result": "ok"})).into_response();
    let username = request.username.as_deref().unwrap_or_default();
    match hook.as_str() {
        "auth_on_register" | "auth_on_register_m5" => {
            let principal = login(
                &state,
                Login {
                    client_id: request.client_id.as_deref(),
                    username: request.username.as_deref(),
                    password: request.password.as_deref(),
                    certificate_sha256: None,
                    address: request.peer_addr.as_deref(),
                },
                peer,
            )
            .await;
            Ok(if principal.is_some() {
                ok()
            } else {
                not_allowed()
            })
        }
        "auth_on_publish" | "auth_on_publish_m5" => {
            let topic = request
                .topic
                .as_deref()
                .ok_or_else(|| ApiError::field("topic", "missing"))?;
            Ok(if may(&state, username, Access::Publish, topic).await? {
                cached(ok())
            } else {
                not_allowed()
            })
        }
        "auth_on_subscribe" | "auth_on_subscribe_m5" => {
            let topics = request
                .topics
                .ok_or_else(|| ApiError::field("topics", "missing"))?;
            // A refused filter gets the failure QoS of its protocol: 0x80
            // in a 3.1.1 SUBACK, 0x87 Not authorized in MQTT 5.
            let refused = if hook.ends_with("_m5") { 0x87 } else { 0x80 };
            let mut answered = Vec::with_capacity(topics.len());
            let mut all = true;
            for t in topics {
                let allowed = may(&state, username, Access::Subscribe, &t.topic).await?;
                all &= allowed;
                answered.push(VernemqTopic {
                    qos: if allowed { t.qos } else { refused },
                    topic: t.topic,
                });
            }
            Ok(if all {
                cached(ok())
            } else if hook.ends_with("_m5") {
                Json(serde_json::json!({"result": "ok", "modifiers": {"topics": answered}}))
                    .into_response()
            } else {
                Json(serde_json::json!({"result": "ok", "topics": answered})).into_response()
            })
        }
        other => Err(ApiError::bad_request(format!(
            "vernemq-hook {other:?}: register this endpoint for auth_on_register, auth_on_publish and auth_on_subscribe (or their _m5 forms)"
        ))),
    }
}

// --- mosquitto-go-auth (HTTP backend) ---------------------------------------------

#[derive(Debug, Deserialize)]
pub(crate) struct GoAuthUser {
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    clientid: Option<String>,
}

/// acc: 1 read (a message delivered), 2 write (publish), 3 both, 4 subscribe.
#[derive(Debug, Deserialize)]
pub(crate) struct GoAuthAcl {
    username: String,
    topic: String,
    acc: NumberOrText,
}

/// mosquitto-go-auth's answer: the status decides (`status` mode), and the
/// body is what its `json` mode reads.
fn go_auth_answer(allowed: bool, why: &str) -> Response {
    let status = if allowed {
        StatusCode::OK
    } else {
        StatusCode::FORBIDDEN
    };
    (
        status,
        Json(serde_json::json!({"ok": allowed, "error": if allowed { "" } else { why }})),
    )
        .into_response()
}

/// `auth_opt_http_getuser_uri /api/v1/mqtt/go-auth/{secret}/user`.
pub(crate) async fn go_auth_user(
    State(state): State<Arc<AppState>>,
    Path(secret): Path<String>,
    Source(peer): Source,
    HookBody(body): HookBody<GoAuthUser>,
) -> Result<Response, ApiError> {
    check_secret(&state, Some(&secret))?;
    let request = body?;
    let principal = login(
        &state,
        Login {
            client_id: request.clientid.as_deref(),
            username: request.username.as_deref(),
            password: request.password.as_deref(),
            certificate_sha256: None,
            address: None,
        },
        peer,
    )
    .await;
    Ok(go_auth_answer(principal.is_some(), "bad credentials"))
}

/// `auth_opt_http_superuser_uri …/superuser`: the platform's clients and
/// operator admins are (they may publish and subscribe anywhere, and the
/// platform's task requests go to a new topic each); devices are not.
pub(crate) async fn go_auth_superuser(
    State(state): State<Arc<AppState>>,
    Path(secret): Path<String>,
    HookBody(body): HookBody<GoAuthSuperuser>,
) -> Result<Response, ApiError> {
    check_secret(&state, Some(&secret))?;
    let request = body?;
    let principal = state
        .principals
        .principal(&state.store, &request.username)
        .await?;
    Ok(go_auth_answer(
        matches!(principal, Some(Principal::Operator { .. })),
        "not a superuser",
    ))
}

#[derive(Debug, Deserialize)]
pub(crate) struct GoAuthSuperuser {
    username: String,
}

/// `auth_opt_http_aclcheck_uri …/acl`.
pub(crate) async fn go_auth_acl(
    State(state): State<Arc<AppState>>,
    Path(secret): Path<String>,
    HookBody(body): HookBody<GoAuthAcl>,
) -> Result<Response, ApiError> {
    check_secret(&state, Some(&secret))?;
    let request = body?;
    let allowed = match request.acc.value() {
        Some(1) => may(&state, &request.username, Access::Read, &request.topic).await?,
        Some(2) => may(&state, &request.username, Access::Publish, &request.topic).await?,
        Some(3) => {
            may(&state, &request.username, Access::Read, &request.topic).await?
                && may(&state, &request.username, Access::Publish, &request.topic).await?
        }
        Some(4) => may(&state, &request.username, Access::Subscribe, &request.topic).await?,
        _ => return Err(ApiError::field("acc", "must be 1, 2, 3 or 4")),
    };
    Ok(go_auth_answer(allowed, "not allowed"))
}

/// The hooks of rmqtt, VerneMQ and mosquitto-go-auth. Outside the OpenAPI
/// document: their bodies are the brokers', not the platform's API.
pub(crate) fn router() -> axum::Router<Arc<AppState>> {
    use axum::routing::post;
    axum::Router::new()
        .route("/api/v1/mqtt/rmqtt/auth", post(rmqtt_auth))
        .route("/api/v1/mqtt/rmqtt/acl", post(rmqtt_acl))
        .route("/api/v1/mqtt/vernemq/{secret}", post(vernemq))
        .route("/api/v1/mqtt/go-auth/{secret}/user", post(go_auth_user))
        .route(
            "/api/v1/mqtt/go-auth/{secret}/superuser",
            post(go_auth_superuser),
        )
        .route("/api/v1/mqtt/go-auth/{secret}/acl", post(go_auth_acl))
}
