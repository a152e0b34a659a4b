//! The HTTP API: JSON under `/api/v1`, errors as RFC 7807 problem+json.
//!
//! A request is authenticated by the `telemark_session` cookie (the console;
//! unsafe methods then need the `X-CSRF-Token` the login returned) or by
//! `Authorization: Bearer TOKEN` (scripts). Every handler works inside the
//! caller's scope, which the store takes as an argument.

mod broker_hooks;
mod dto;
mod error;
mod routes;

use std::sync::Arc;

use axum::Router;
use store::Store;

pub use error::ApiError;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub options: ApiOptions,
    /// Who the broker hooks' user names are, for a minute at a time.
    pub principals: Arc<platform::device_access::PrincipalCache>,
}

/// Switches of the API.
#[derive(Clone, Default)]
pub struct ApiOptions {
    /// Enables `/api/v1/mqtt/authenticate` and `/api/v1/mqtt/authorize` for
    /// an external broker (EMQX HTTP authentication and authorization), which
    /// must send `Authorization: Bearer SECRET`.
    pub broker_hook_secret: Option<String>,
    /// The telemetry ingest of this process: latest values and live readings.
    pub ingest: Option<Arc<platform::telemetry::Ingest>>,
    /// The alarm engine: told of rule changes and acknowledgements.
    pub alarms: Option<Arc<platform::alarms::AlarmEngine>>,
    /// Where black-box bundles are kept (`black-box/` below it).
    pub data_dir: Option<std::path::PathBuf>,
    /// Remote tasks: woken when a job is created, its events for live pages.
    pub tasks: Option<Arc<platform::tasks::TaskService>>,
    /// The firmware repository: image files, download tokens, limits.
    pub firmware: Option<platform::firmware::FirmwareRepository>,
    /// Seconds a hawkBit DDI client is told to sleep between polls (0: 300).
    pub ddi_poll_secs: u64,
    /// Remote access: terminals, tunnels, reverse SSH.
    pub remote: Option<Arc<platform::remote::RemoteSessions>>,
    /// The password-login throttle, shared with the embedded broker so a
    /// console account meets the same limits over MQTT.
    pub logins: Arc<platform::login_guard::LoginGuard>,
    /// Where webhooks may point (public addresses, and the operator's
    /// allowed private targets).
    pub webhooks: Arc<platform::webhook_target::WebhookPolicy>,
    /// Renders `/metrics` (Prometheus text); served to operator admins only.
    pub metrics: Option<MetricsRenderer>,
    /// Mark the session cookie `Secure`: the console is reached over HTTPS.
    pub secure_cookie: bool,
    /// The background tasks, for `GET /api/v1/health`.
    pub supervisor: Option<Arc<platform::supervisor::Supervisor>>,
}

/// Produces the Prometheus text of the process.
pub type MetricsRenderer = Arc<dyn Fn() -> String + Send + Sync>;

/// The API's router, ready to serve or to test with `oneshot`.
pub fn app(store: Store) -> Router {
    app_with(store, ApiOptions::default())
}

pub fn app_with(store: Store, options: ApiOptions) -> Router {
    routes::router(Arc::new(AppState {
        store,
        options,
        principals: Default::default(),
    }))
}
