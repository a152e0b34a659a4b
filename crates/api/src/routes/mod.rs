//! The routes of `/api/v1`, the caller extractor and what every handler
//! shares; the handlers live in one module per area.

mod alarms;
mod audit;
mod bundles;
mod ddi;
mod devices;
mod firmware;
mod licenses;
mod remote;
mod tasks;
mod telemetry;
mod users;

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, Request};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use platform::accounts::{self, Role, Session};
use store::{DeviceCursor, DeviceQuery, DeviceSort, NewDeviceModel};
use utoipa::openapi::security::SecurityScheme;
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::dto::*;
use crate::{ApiError, AppState};

const COOKIE: &str = "telemark_session";
const IMPORT_BODY_LIMIT: usize = 64 << 20;

/// The routes with their OpenAPI description, which `/api/openapi.json` serves.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    let (router, mut document) = OpenApiRouter::with_openapi(ApiDocument::openapi())
        .routes(routes!(users::login, users::me, users::logout))
        .routes(routes!(users::change_password))
        .routes(routes!(users::list_api_tokens, users::create_api_token))
        .routes(routes!(users::revoke_api_token))
        .routes(routes!(
            users::list_organisations,
            users::create_organisation
        ))
        .routes(routes!(users::list_users, users::create_user))
        .routes(routes!(users::set_user_state))
        .routes(routes!(devices::list_models, devices::create_model))
        .routes(routes!(devices::list_devices))
        .routes(routes!(devices::relabel_devices))
        .routes(routes!(devices::get_device))
        .routes(routes!(devices::issue_credentials))
        .routes(routes!(devices::issue_certificate))
        .routes(routes!(telemetry::device_latest))
        .routes(routes!(telemetry::device_series))
        .routes(routes!(telemetry::device_logs))
        .routes(routes!(telemetry::device_faults))
        .routes(routes!(telemetry::device_live))
        .routes(routes!(telemetry::device_presence))
        .routes(routes!(telemetry::device_radio))
        .routes(routes!(devices::device_ca))
        .routes(routes!(devices::get_import))
        .routes(routes!(devices::list_imports))
        .routes(routes!(
            licenses::list_service_models,
            licenses::create_service_model
        ))
        .routes(routes!(
            licenses::list_license_keys,
            licenses::generate_license_keys
        ))
        .routes(routes!(licenses::bind_license))
        .routes(routes!(licenses::unbind_license))
        .routes(routes!(licenses::revoke_license))
        .routes(routes!(licenses::license_public_key))
        .routes(routes!(audit::statistics))
        .routes(routes!(audit::statistics_history))
        .routes(routes!(audit::health))
        .routes(routes!(alarms::list_alarm_rules, alarms::create_alarm_rule))
        .routes(routes!(alarms::set_alarm_rule_state))
        .routes(routes!(alarms::list_alarms))
        .routes(routes!(alarms::acknowledge_alarm))
        .routes(routes!(alarms::list_webhooks, alarms::create_webhook))
        .routes(routes!(alarms::delete_webhook))
        .routes(routes!(tasks::list_device_tasks, tasks::create_device_task))
        .routes(routes!(tasks::list_jobs, tasks::create_job))
        .routes(routes!(tasks::get_job))
        .routes(routes!(tasks::cancel_job))
        .routes(routes!(tasks::list_job_executions))
        .routes(routes!(tasks::job_live))
        .routes(routes!(tasks::get_execution))
        .routes(routes!(tasks::cancel_execution))
        .routes(routes!(tasks::retry_execution))
        .routes(routes!(tasks::device_config))
        .routes(routes!(licenses::deploy_license))
        .routes(routes!(remote::list_sessions, remote::open_session))
        .routes(routes!(remote::get_session, remote::close_session))
        .routes(routes!(remote::session_stream))
        .routes(routes!(firmware::list_images))
        .routes(routes!(firmware::get_image, firmware::delete_image))
        .routes(routes!(firmware::download_image))
        .routes(routes!(firmware::device_download))
        .routes(routes!(firmware::preview_campaign))
        .routes(routes!(firmware::list_campaigns, firmware::create_campaign))
        .routes(routes!(firmware::get_campaign))
        .routes(routes!(firmware::campaign_devices))
        .routes(routes!(firmware::campaign_progress))
        .routes(routes!(firmware::pause_campaign))
        .routes(routes!(firmware::resume_campaign))
        .routes(routes!(firmware::abort_campaign))
        .routes(routes!(firmware::device_firmware))
        .routes(routes!(ddi::issue_target_token, ddi::revoke_target_token))
        .routes(routes!(ddi::issue_gateway_token, ddi::revoke_gateway_token))
        .routes(routes!(bundles::list_bundles))
        .routes(routes!(bundles::download_bundle))
        .routes(routes!(audit::audit_log))
        .routes(routes!(audit::audit_csv))
        .routes(routes!(crate::broker_hooks::authenticate))
        .routes(routes!(crate::broker_hooks::authorize))
        .merge(
            // An ERP export of a whole fleet is larger than the 2 MB every
            // other request is held to: 100,000 devices are about 10 MB.
            OpenApiRouter::new()
                .routes(routes!(devices::import_devices))
                .routes(routes!(licenses::import_license_keys))
                .layer(axum::extract::DefaultBodyLimit::max(IMPORT_BODY_LIMIT)),
        )
        .merge(
            // A black-box bundle streams to a file, bounded by the handler.
            OpenApiRouter::new()
                .routes(routes!(bundles::upload_bundle))
                .routes(routes!(firmware::upload_image))
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .split_for_parts();
    document.info.version = env!("CARGO_PKG_VERSION").to_owned();
    let document = Arc::new(document);
    router
        .merge(ddi::router())
        .merge(crate::broker_hooks::router())
        .route("/metrics", get(metrics))
        .route(
            "/api/openapi.json",
            get(move || {
                let document = document.clone();
                async move { Json(document.as_ref().clone()) }
            }),
        )
        .fallback(console_or_not_found)
        .with_state(state)
}

/// Prometheus text for the operator: on the API's port it needs an
/// operator admin's session or API token (a scraper holds a `tmk_` token);
/// `[metrics] bind` serves it without one on an address of its own.
async fn metrics(State(state): State<Arc<AppState>>, caller: Caller) -> Result<Response, ApiError> {
    if caller.session.role != Role::OperatorAdmin {
        return Err(ApiError::Forbidden(
            "metrics are for the operator's admins".into(),
        ));
    }
    let Some(render) = &state.options.metrics else {
        return Err(ApiError::NotFound("no metrics here".into()));
    };
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render(),
    )
        .into_response())
}

/// Everything outside `/api` is the console: its files, or its index for
/// the app's own routes.
async fn console_or_not_found(method: Method, uri: axum::http::Uri) -> Response {
    let path = uri.path();
    if path.starts_with("/api/") || (method != Method::GET && method != Method::HEAD) {
        return ApiError::NotFound("no such endpoint".into()).into_response();
    }
    let Some(asset) = console::asset(path) else {
        return ApiError::NotFound(format!("no such file: {path}")).into_response();
    };
    let cache = if asset.immutable {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    (
        [
            (header::CONTENT_TYPE, asset.content_type),
            (header::CACHE_CONTROL, cache.to_owned()),
            // The console talks to its own server only: no CDN, no fonts or
            // scripts from elsewhere, and no framing by another site.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; \
                 connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'"
                    .to_owned(),
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
            (header::REFERRER_POLICY, "same-origin".to_owned()),
        ],
        asset.bytes,
    )
        .into_response()
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Telemark API",
        description = "Device registry, licensing, users and audit of the Telemark IoT platform. \
            Log in with `POST /api/v1/session`; send the returned token as `Authorization: Bearer`, \
            or use the session cookie and echo `csrf_token` as `X-CSRF-Token` on unsafe methods."
    ),
    components(responses(
        crate::error::BadRequest,
        crate::error::Unauthenticated,
        crate::error::NotAllowed,
        crate::error::NotInScope,
        crate::error::StateConflict
    )),
    modifiers(&Authentication),
    security(("bearer" = []), ("session_cookie" = []))
)]
struct ApiDocument;

struct Authentication;

impl Modify for Authentication {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "a session token from the login, or a long-lived `tmk_` API token",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session_cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(COOKIE))),
        );
    }
}

fn csrf_for(token: &str) -> String {
    accounts::sha256_hex(format!("csrf:{token}").as_bytes())
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(|t| t.trim().to_owned())
}

/// The logged-in caller. Cookie callers must echo the CSRF token on unsafe
/// methods; bearer callers need not (a browser never sends the header by itself).
pub(crate) struct Caller {
    session: Session,
    token: String,
    address: Option<String>,
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        let (token, from_cookie) =
            match (bearer_token(&parts.headers), cookie_token(&parts.headers)) {
                (Some(t), _) => (t, false),
                (None, Some(t)) => (t, true),
                (None, None) => return Err(ApiError::Unauthorized),
            };
        let session = accounts::session(&state.store, &token)
            .await?
            .ok_or(ApiError::Unauthorized)?;
        let unsafe_method = !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
        if from_cookie && unsafe_method {
            let sent = parts
                .headers
                .get("x-csrf-token")
                .and_then(|v| v.to_str().ok());
            let expected = csrf_for(&token);
            let matches = sent.is_some_and(|sent| {
                platform::device_access::constant_time_eq(sent.as_bytes(), expected.as_bytes())
            });
            if !matches {
                return Err(ApiError::Forbidden("missing or wrong X-CSRF-Token".into()));
            }
        }
        let address = peer_ip(parts).map(|ip| ip.to_string());
        Ok(Caller {
            session,
            token,
            address,
        })
    }
}

/// A caller who may or may not be logged in (open endpoints that show more
/// to some roles); a wrong or missing token is no caller, not an error.
impl axum::extract::OptionalFromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Option<Self>, ApiError> {
        match <Caller as FromRequestParts<Arc<AppState>>>::from_request_parts(parts, state).await {
            Ok(caller) => Ok(Some(caller)),
            Err(ApiError::Unauthorized | ApiError::Forbidden(_)) => Ok(None),
            Err(other) => Err(other),
        }
    }
}

impl Caller {
    /// Writes the system log entry of a change this caller made.
    async fn audit(
        &self,
        state: &AppState,
        action: &str,
        target: String,
        before: Option<String>,
        after: Option<String>,
    ) -> Result<(), ApiError> {
        state
            .store
            .record_audit(&store::NewAuditEntry {
                organisation_id: self.session.user.organisation_id,
                actor: self.session.user.username.clone(),
                action: action.to_owned(),
                target,
                before_value: before,
                after_value: after,
                address: self.address.clone(),
            })
            .await?;
        Ok(())
    }

    /// Audits a creation with the new object as its after value, and answers 201.
    async fn created<T: serde::Serialize>(
        &self,
        state: &AppState,
        action: &str,
        target: String,
        dto: T,
    ) -> Result<(axum::http::StatusCode, Json<T>), ApiError> {
        self.audit(
            state,
            action,
            target,
            None,
            serde_json::to_string(&dto).ok(),
        )
        .await?;
        Ok((axum::http::StatusCode::CREATED, Json(dto)))
    }

    fn require_admin(&self) -> Result<(), ApiError> {
        if self.session.role.is_admin() {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "the {} role cannot change this",
                self.session.role.as_str()
            )))
        }
    }
}

/// The address a request came from (its TCP peer; a forwarded-for header
/// is not trusted). Without one (a router tested with `oneshot`), the
/// unspecified address.
pub(crate) struct Source(pub std::net::IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for Source {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Source(
            peer_ip(parts).unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into()),
        ))
    }
}

/// The TCP peer of a request, when the server recorded it.
fn peer_ip(parts: &Parts) -> Option<std::net::IpAddr> {
    parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip())
}

/// An object id from the path; one that is not a number gets a problem
/// document like every other bad request.
pub(crate) struct Id(pub i64);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<i64>::from_request_parts(parts, state).await {
            Ok(Path(id)) => Ok(Id(id)),
            Err(e) => Err(ApiError::field("id", id_problem(&e))),
        }
    }
}

/// A WebSocket that sends each event `to_text` keeps, until either side
/// closes. A slow reader skips events (the channel lags) rather than
/// slowing whoever sends them.
fn live_events<T: Clone + Send + 'static>(
    upgrade: axum::extract::ws::WebSocketUpgrade,
    mut events: tokio::sync::broadcast::Receiver<T>,
    to_text: impl Fn(T) -> Option<String> + Send + 'static,
) -> Response {
    upgrade.on_upgrade(move |mut socket| async move {
        use axum::extract::ws::Message;
        use tokio::sync::broadcast::error::RecvError;
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Ok(event) => {
                        if let Some(text) = to_text(event)
                            && socket.send(Message::Text(text.into())).await.is_err()
                        {
                            return;
                        }
                    }
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                },
                incoming = socket.recv() => match incoming {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => {}
                },
            }
        }
    })
}

fn id_problem(e: &PathRejection) -> String {
    format!("must be a whole number ({})", e.body_text())
}

/// The page size a list query asked for, within what the endpoint serves.
fn page_limit(limit: Option<u32>, default: u32, max: u32) -> Result<u32, ApiError> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::field("limit", format!("must be 1 to {max}"))),
    }
}

/// A JSON object body. Serde would also take a struct from an array of its
/// fields in order; a request body must say which field is which. The error
/// waits until the handler has checked the caller's rights, so a caller
/// without them learns nothing from a 400.
pub(crate) struct JsonObject<T>(Result<T, ApiError>);

impl<T> JsonObject<T> {
    pub(crate) fn parse(self) -> Result<T, ApiError> {
        self.0
    }
}

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for JsonObject<T> {
    type Rejection = std::convert::Infallible;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let parsed = match Json::<serde_json::Value>::from_request(req, state).await {
            Err(e) => Err(ApiError::bad_request(e.body_text())),
            Ok(Json(value)) if !value.is_object() => {
                Err(ApiError::bad_request("the body must be a JSON object"))
            }
            Ok(Json(value)) => {
                serde_json::from_value(value).map_err(|e| ApiError::bad_request(e.to_string()))
            }
        };
        Ok(JsonObject(parsed))
    }
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

/// CSV by default; an ERP batch as application/json. The source name is
/// the file name the caller gave, or one that says which it was.
fn import_format(
    headers: &HeaderMap,
    source: Option<String>,
) -> (platform::import::ImportFormat, String) {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let (format, default_source) = if json {
        (platform::import::ImportFormat::ErpJson, "erp.json")
    } else {
        (platform::import::ImportFormat::Csv, "upload.csv")
    };
    (format, source.unwrap_or_else(|| default_source.into()))
}
