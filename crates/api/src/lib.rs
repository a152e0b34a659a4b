//! The HTTP API: JSON under `/api/v1`, errors as RFC 7807 problem+json.
//!
//! A request is authenticated by the `telemark_session` cookie (the console;
//! unsafe methods then need the `X-CSRF-Token` the login returned) or by
//! `Authorization: Bearer TOKEN` (scripts). Every handler works inside the
//! caller's scope, which the store takes as an argument.

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
}

/// The API's router, ready to serve or to test with `oneshot`.
pub fn app(store: Store) -> Router {
    routes::router(Arc::new(AppState { store }))
}
