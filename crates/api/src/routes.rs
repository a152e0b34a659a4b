//! The routes of `/api/v1` and the caller extractor.

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
use sha2::{Digest, Sha256};
use store::{DeviceCursor, DeviceQuery, DeviceSort, NewDeviceModel};
use utoipa::openapi::security::SecurityScheme;
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::dto::*;
use crate::{ApiError, AppState};

const COOKIE: &str = "telemark_session";

/// The routes with their OpenAPI description, which `/api/openapi.json` serves.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    let (router, mut document) = OpenApiRouter::with_openapi(ApiDocument::openapi())
        .routes(routes!(login, me, logout))
        .routes(routes!(change_password))
        .routes(routes!(list_api_tokens, create_api_token))
        .routes(routes!(revoke_api_token))
        .routes(routes!(list_organisations, create_organisation))
        .routes(routes!(list_users, create_user))
        .routes(routes!(set_user_state))
        .routes(routes!(list_models, create_model))
        .routes(routes!(list_devices))
        .routes(routes!(get_device))
        .routes(routes!(import_devices))
        .routes(routes!(issue_credentials))
        .routes(routes!(issue_certificate))
        .routes(routes!(device_latest))
        .routes(routes!(device_series))
        .routes(routes!(device_logs))
        .routes(routes!(device_faults))
        .routes(routes!(device_live))
        .routes(routes!(device_presence))
        .routes(routes!(device_ca))
        .routes(routes!(get_import))
        .routes(routes!(list_imports))
        .routes(routes!(import_license_keys))
        .routes(routes!(list_service_models, create_service_model))
        .routes(routes!(list_license_keys, generate_license_keys))
        .routes(routes!(bind_license))
        .routes(routes!(unbind_license))
        .routes(routes!(revoke_license))
        .routes(routes!(license_public_key))
        .routes(routes!(statistics))
        .routes(routes!(list_alarm_rules, create_alarm_rule))
        .routes(routes!(set_alarm_rule_state))
        .routes(routes!(list_alarms))
        .routes(routes!(acknowledge_alarm))
        .routes(routes!(list_webhooks, create_webhook))
        .routes(routes!(delete_webhook))
        .routes(routes!(audit_log))
        .routes(routes!(audit_csv))
        .routes(routes!(crate::broker_hooks::authenticate))
        .routes(routes!(crate::broker_hooks::authorize))
        .split_for_parts();
    document.info.version = env!("CARGO_PKG_VERSION").to_owned();
    let document = Arc::new(document);
    router
        .route(
            "/api/openapi.json",
            get(move || {
                let document = document.clone();
                async move { Json(document.as_ref().clone()) }
            }),
        )
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .with_state(state)
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Telemark API",
        description = "Device registry, licensing, users and audit of the Telemark IoT platform. \
            Log in with `POST /api/v1/session`; send the returned token as `Authorization: Bearer`, \
            or use the session cookie and echo `csrf_token` as `X-CSRF-Token` on unsafe methods."
    ),
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
    Sha256::digest(format!("csrf:{token}").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
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
            if sent != Some(csrf_for(&token).as_str()) {
                return Err(ApiError::Forbidden("missing or wrong X-CSRF-Token".into()));
            }
        }
        let address = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|info| info.0.ip().to_string());
        Ok(Caller {
            session,
            token,
            address,
        })
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

#[utoipa::path(
    post,
    path = "/api/v1/session",
    tag = "session",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "logged in; sets the session cookie", body = SessionDto),
        (status = 400, description = "invalid request; `errors` names each field", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "not logged in", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "too many failed logins; see Retry-After", body = crate::error::Problem, content_type = "application/problem+json")
    ),
    security(())
)]
async fn login(
    State(state): State<Arc<AppState>>,
    body: JsonObject<LoginRequest>,
) -> Result<Response, ApiError> {
    let request = body.parse()?;
    if let Some(wait) = state.logins.locked_for(&request.username) {
        return Err(ApiError::TooManyAttempts(wait.as_secs().max(1)));
    }
    let (session, token) =
        match accounts::login(&state.store, &request.username, &request.password).await {
            Ok(ok) => {
                state.logins.succeeded(&request.username);
                ok
            }
            Err(accounts::AccountError::BadCredentials) => {
                state.logins.failed(&request.username);
                return Err(ApiError::Unauthorized);
            }
            Err(e) => return Err(e.into()),
        };
    let cookie = format!(
        "{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        accounts::SESSION_HOURS * 3600
    );
    let dto = SessionDto {
        user_id: session.user.id,
        username: session.user.username.clone(),
        role: session.role.as_str().to_owned(),
        organisation_id: session.user.organisation_id,
        csrf_token: Some(csrf_for(&token)),
        token: Some(token),
    };
    Ok(([(header::SET_COOKIE, cookie)], Json(dto)).into_response())
}

#[utoipa::path(
    get,
    path = "/api/v1/session",
    tag = "session",
    responses(
        (status = 200, description = "who is logged in", body = SessionDto),
        (status = 401, description = "not logged in", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn me(caller: Caller) -> Json<SessionDto> {
    Json(SessionDto {
        user_id: caller.session.user.id,
        username: caller.session.user.username.clone(),
        role: caller.session.role.as_str().to_owned(),
        organisation_id: caller.session.user.organisation_id,
        csrf_token: None,
        token: None,
    })
}

#[utoipa::path(
    delete,
    path = "/api/v1/session",
    tag = "session",
    responses(
        (status = 204, description = "logged out; the cookie is cleared"),
        (status = 401, description = "not logged in", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller's role may not do this, or a missing CSRF token", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn logout(State(state): State<Arc<AppState>>, caller: Caller) -> Result<Response, ApiError> {
    accounts::logout(&state.store, &caller.token).await?;
    let expired = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    Ok((
        [(header::SET_COOKIE, expired)],
        axum::http::StatusCode::NO_CONTENT,
    )
        .into_response())
}

#[utoipa::path(
    get,
    path = "/api/v1/organisations",
    tag = "organisations",
    responses(
        (status = 200, description = "the caller's organisation and those below it", body = Vec<OrganisationDto>),
        (status = 401, description = "not logged in", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn list_organisations(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Vec<OrganisationDto>>, ApiError> {
    let orgs = state.store.organisations(&caller.session.scope).await?;
    Ok(Json(orgs.into_iter().map(Into::into).collect()))
}

#[utoipa::path(
    post,
    path = "/api/v1/organisations",
    tag = "organisations",
    request_body = NewOrganisationDto,
    responses(
        (status = 201, description = "created", body = OrganisationDto),
        (status = 400, description = "invalid request; `errors` names each field", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "not logged in", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller's role may not do this, or a missing CSRF token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such object in the caller's scope", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "conflicts with the current state", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn create_organisation(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    body: JsonObject<NewOrganisationDto>,
) -> Result<(axum::http::StatusCode, Json<OrganisationDto>), ApiError> {
    caller.require_admin()?;
    let request = body.parse()?;
    if request.name.trim().is_empty() {
        return Err(ApiError::field("name", "must not be empty"));
    }
    let org = state
        .store
        .create_organisation(&caller.session.scope, request.parent_id, &request.name)
        .await?;
    let dto = OrganisationDto::from(org);
    let target = format!("organisation {}", dto.id);
    caller
        .created(&state, "organisation.create", target, dto)
        .await
}

#[utoipa::path(
    get,
    path = "/api/v1/device-models",
    tag = "devices",
    responses(
        (status = 200, description = "device models", body = Vec<DeviceModelDto>),
        (status = 401, description = "not logged in", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn list_models(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
) -> Result<Json<Vec<DeviceModelDto>>, ApiError> {
    let models = state.store.device_models().await?;
    Ok(Json(models.into_iter().map(Into::into).collect()))
}

#[utoipa::path(
    post,
    path = "/api/v1/device-models",
    tag = "devices",
    request_body = DeviceModelDto,
    responses(
        (status = 201, description = "created", body = DeviceModelDto),
        (status = 400, description = "invalid request; `errors` names each field", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "not logged in", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller's role may not do this, or a missing CSRF token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "conflicts with the current state", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn create_model(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    body: JsonObject<DeviceModelDto>,
) -> Result<(axum::http::StatusCode, Json<DeviceModelDto>), ApiError> {
    if caller.session.role != Role::OperatorAdmin {
        return Err(ApiError::Forbidden(
            "only the operator manages device models".into(),
        ));
    }
    let m = body.parse()?;
    let mut errors = Vec::new();
    for (field, value) in [
        ("name", &m.name),
        ("vendor", &m.vendor),
        ("topic_segment", &m.topic_segment),
    ] {
        if value.trim().is_empty() {
            errors.push(crate::error::FieldError {
                field: field.into(),
                message: "must not be empty".into(),
            });
        }
    }
    if !m.topic_segment.is_empty()
        && !m
            .topic_segment
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        errors.push(crate::error::FieldError {
            field: "topic_segment".into(),
            message: "lower-case letters, digits and '-' only (it is a topic level)".into(),
        });
    }
    if !errors.is_empty() {
        return Err(ApiError::BadRequest {
            detail: "the device model is not valid".into(),
            errors,
        });
    }
    let model = state
        .store
        .create_device_model(&NewDeviceModel {
            name: m.name,
            vendor: m.vendor,
            hardware_revision: m.hardware_revision,
            topic_segment: m.topic_segment,
            description: m.description,
        })
        .await?;
    let dto = DeviceModelDto::from(model);
    let target = format!("device model {}", dto.id);
    caller
        .created(&state, "device_model.create", target, dto)
        .await
}

#[utoipa::path(
    get,
    path = "/api/v1/devices",
    tag = "devices",
    params(DeviceListQuery),
    responses(
        (status = 200, description = "a page of devices; pass `next_after_id` as `after_id` for the next", body = DevicePageDto),
        (status = 400, description = "invalid request; `errors` names each field", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "not logged in", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "the organisation filter names no organisation in the caller's scope", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn list_devices(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    q: Result<Query<DeviceListQuery>, QueryRejection>,
) -> Result<Json<DevicePageDto>, ApiError> {
    let q = query(q)?;
    let (sort, descending) = match q.sort.as_deref().unwrap_or("id") {
        s if s.starts_with('-') => (device_sort(&s[1..])?, true),
        s => (device_sort(s)?, false),
    };
    let after = match (&q.after, q.after_id) {
        (Some(cursor), _) => Some(decode_cursor(cursor, sort)?),
        (None, Some(id)) if sort == DeviceSort::Id => Some(DeviceCursor::Id(id)),
        (None, Some(_)) => {
            return Err(ApiError::field(
                "after_id",
                "pages in another order than id continue with `after`",
            ));
        }
        (None, None) => None,
    };
    let page = state
        .store
        .devices(
            &caller.session.scope,
            &DeviceQuery {
                search: q.search,
                model_id: q.model_id,
                organisation_id: q.organisation_id,
                license_state: q.license_state,
                online: q.online,
                label: q.label,
                sort,
                descending,
                after,
                limit: page_limit(q.limit, 100, 1000)?,
            },
        )
        .await?;
    Ok(Json(DevicePageDto {
        devices: page.devices.into_iter().map(Into::into).collect(),
        next_after_id: match &page.next {
            Some(DeviceCursor::Id(id)) => Some(*id),
            _ => None,
        },
        next_cursor: page.next.as_ref().map(encode_cursor),
    }))
}

fn device_sort(name: &str) -> Result<DeviceSort, ApiError> {
    Ok(match name {
        "id" => DeviceSort::Id,
        "name" => DeviceSort::Name,
        "serial" => DeviceSort::Serial,
        "last_seen" => DeviceSort::LastSeen,
        _ => {
            return Err(ApiError::field(
                "sort",
                "must be id, name, serial or last_seen, with an optional leading '-'",
            ));
        }
    })
}

/// A cursor is opaque to clients: the sort value and id, hex-encoded so it
/// needs no escaping in a URL.
fn encode_cursor(cursor: &DeviceCursor) -> String {
    let text = match cursor {
        DeviceCursor::Id(id) => format!("i:{id}"),
        DeviceCursor::Number(value, id) => format!("n:{id}:{value}"),
        DeviceCursor::Text(value, id) => format!("t:{id}:{value}"),
    };
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_cursor(hex: &str, sort: DeviceSort) -> Result<DeviceCursor, ApiError> {
    let bad = || ApiError::field("after", "is not a cursor this list gave out");
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect();
    let text = String::from_utf8(bytes.ok_or_else(bad)?).map_err(|_| bad())?;
    let mut parts = text.splitn(3, ':');
    let (kind, id) = (parts.next(), parts.next().and_then(|i| i.parse().ok()));
    let cursor = match (kind, id, parts.next()) {
        (Some("i"), Some(id), None) => DeviceCursor::Id(id),
        (Some("n"), Some(id), Some(v)) => DeviceCursor::Number(v.parse().map_err(|_| bad())?, id),
        (Some("t"), Some(id), Some(v)) => DeviceCursor::Text(v.to_owned(), id),
        _ => return Err(bad()),
    };
    let fits = matches!(
        (&cursor, sort),
        (DeviceCursor::Id(_), DeviceSort::Id)
            | (DeviceCursor::Number(..), DeviceSort::LastSeen)
            | (
                DeviceCursor::Text(..),
                DeviceSort::Name | DeviceSort::Serial
            )
    );
    if fits { Ok(cursor) } else { Err(bad()) }
}

#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}",
    tag = "devices",
    params(("id" = i64, Path, description = "the object's id")),
    responses(
        (status = 200, description = "the device", body = DeviceDto),
        (status = 400, description = "invalid request; `errors` names each field", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "not logged in", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such object in the caller's scope", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn get_device(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
) -> Result<Json<DeviceDto>, ApiError> {
    Ok(Json(
        state.store.device(&caller.session.scope, id).await?.into(),
    ))
}

#[utoipa::path(
    post,
    path = "/api/v1/devices/import",
    tag = "devices",
    params(ImportQuery),
    request_body(description = "CSV with a header row (text/csv), or an ERP batch (application/json)", content((String = "text/csv"), (ErpBatchDoc = "application/json"))),
    responses(
        (status = 200, description = "the import record, with each rejected row's line and reason", body = ImportRecordDto),
        (status = 400, description = "invalid request; `errors` names each field", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "not logged in", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller's role may not do this, or a missing CSRF token", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn import_devices(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    q: Result<Query<ImportQuery>, QueryRejection>,
    body: axum::body::Bytes,
) -> Result<Json<ImportRecordDto>, ApiError> {
    caller.require_admin()?;
    let q = query(q)?;
    let (format, source) = import_format(&headers, q.source);
    let record = platform::import::import(
        &state.store,
        &caller.session.scope,
        &caller.session.user.username,
        &source,
        &body,
        format,
        q.partial,
    )
    .await?;
    let dto = ImportRecordDto::from(record);
    caller
        .audit(
            &state,
            "device.import",
            format!("import {} ({})", dto.id, dto.source_name),
            None,
            Some(format!(
                "{} accepted, {} rejected",
                dto.rows_accepted, dto.rows_rejected
            )),
        )
        .await?;
    Ok(Json(dto))
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

#[utoipa::path(
    post,
    path = "/api/v1/license-keys/import",
    tag = "licenses",
    params(KeyImportQuery),
    request_body(description = "CSV with a `key` column (text/csv), or an ERP batch (application/json)", content((String = "text/csv"), (ErpKeyBatchDoc = "application/json"))),
    responses(
        (status = 200, description = "the import record, with each rejected line and reason", body = ImportRecordDto),
        (status = 400, description = "invalid request; `errors` names each field", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "not logged in", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller's role may not do this, or a missing CSRF token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such organisation in the caller's scope, or no such service model", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn import_license_keys(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    q: Result<Query<KeyImportQuery>, QueryRejection>,
    body: axum::body::Bytes,
) -> Result<Json<ImportRecordDto>, ApiError> {
    caller.require_admin()?;
    let q = query(q)?;
    let (format, source) = import_format(&headers, q.source);
    let record = platform::licensing::import_keys(
        &state.store,
        &caller.session.scope,
        platform::licensing::KeyImport {
            actor: &caller.session.user.username,
            source_name: &source,
            organisation_id: q.organisation_id,
            service_model_id: q.service_model_id,
            partial: q.partial,
        },
        &body,
        format,
    )
    .await?;
    let dto = ImportRecordDto::from(record);
    caller
        .audit(
            &state,
            "license.import",
            format!("import {} ({})", dto.id, dto.source_name),
            None,
            Some(format!(
                "{} keys of service model {} for organisation {}, {} rejected",
                dto.rows_accepted, q.service_model_id, q.organisation_id, dto.rows_rejected
            )),
        )
        .await?;
    Ok(Json(dto))
}

#[utoipa::path(
    get,
    path = "/api/v1/imports",
    tag = "devices",
    params(ImportListQuery),
    responses(
        (status = 200, description = "ERP import records, newest first (rejections with each record)", body = Vec<ImportRecordDto>),
        (status = 400, description = "invalid request; `errors` names each field", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "not logged in", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn list_imports(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    q: Result<Query<ImportListQuery>, QueryRejection>,
) -> Result<Json<Vec<ImportRecordDto>>, ApiError> {
    let q = query(q)?;
    if let Some(kind) = &q.kind
        && kind != "devices"
        && kind != "license_keys"
    {
        return Err(ApiError::field("kind", "must be devices or license_keys"));
    }
    let records = state
        .store
        .import_records(
            &caller.session.scope,
            &store::ImportQuery {
                kind: q.kind,
                before_id: q.before_id,
                limit: page_limit(q.limit, 100, 1000)?,
            },
        )
        .await?;
    Ok(Json(records.into_iter().map(Into::into).collect()))
}

#[utoipa::path(
    get,
    path = "/api/v1/imports/{id}",
    tag = "devices",
    params(("id" = i64, Path, description = "the object's id")),
    responses(
        (status = 200, description = "an import record", body = ImportRecordDto),
        (status = 400, description = "invalid request; `errors` names each field", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "not logged in", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such object in the caller's scope", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn get_import(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
) -> Result<Json<ImportRecordDto>, ApiError> {
    Ok(Json(
        state
            .store
            .import_record(&caller.session.scope, id)
            .await?
            .into(),
    ))
}

#[utoipa::path(
    get,
    path = "/api/v1/statistics",
    tag = "statistics",
    responses(
        (status = 200, description = "the dashboard counters with their change since the same day last week", body = StatisticsDto),
        (status = 401, description = "not logged in", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn statistics(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<StatisticsDto>, ApiError> {
    let scope = &caller.session.scope;
    let now = state.store.counters(scope).await?;
    let today = store::today();
    // Looking is also a snapshot: today's row exists once anyone has looked.
    state.store.save_daily_counters(scope, today, &now).await?;
    let week_ago = state.store.daily_counters(scope, today - 7).await?;
    let w = |f: fn(&store::Counters) -> i64| week_ago.as_ref().map(f);
    Ok(Json(StatisticsDto {
        devices: CounterDto::new(now.devices, w(|c| c.devices)),
        online_devices: CounterDto::new(now.online_devices, w(|c| c.online_devices)),
        users: CounterDto::new(now.users, w(|c| c.users)),
        system_integrators: CounterDto::new(now.integrators, w(|c| c.integrators)),
        business_customers: CounterDto::new(now.customers, w(|c| c.customers)),
        license_keys: CounterDto::new(now.license_keys, w(|c| c.license_keys)),
    }))
}

#[utoipa::path(
    post,
    path = "/api/v1/devices/{id}/credentials",
    tag = "devices",
    params(("id" = i64, Path, description = "the object's id")),
    responses(
        (status = 201, description = "new MQTT credentials, shown once", body = DeviceCredentialsDto),
        (status = 400, description = "invalid request; `errors` names each field", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "not logged in", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller's role may not do this, or a missing CSRF token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such object in the caller's scope", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn issue_credentials(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
) -> Result<(axum::http::StatusCode, Json<DeviceCredentialsDto>), ApiError> {
    caller.require_admin()?;
    let issued =
        platform::device_access::issue_secret(&state.store, &caller.session.scope, id).await?;
    caller
        .audit(
            &state,
            "device.credentials",
            format!("device {id} ({})", issued.username),
            None,
            Some("new MQTT secret issued".into()),
        )
        .await?;
    Ok((
        axum::http::StatusCode::CREATED,
        Json(DeviceCredentialsDto {
            username: issued.username,
            password: issued.secret,
            topic_prefix: issued.topic_prefix,
        }),
    ))
}

#[utoipa::path(
    post,
    path = "/api/v1/devices/{id}/certificate",
    tag = "devices",
    params(("id" = i64, Path, description = "the object's id")),
    request_body = CertificateRequestDto,
    responses(
        (status = 201, description = "the device's client certificate; the broker accepts it from now on", body = DeviceCertificateDto),
        (status = 400, description = "invalid request; `errors` names each field", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "not logged in", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller's role may not do this, or a missing CSRF token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such object in the caller's scope", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "another device already has this certificate", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn issue_certificate(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
    body: JsonObject<CertificateRequestDto>,
) -> Result<(axum::http::StatusCode, Json<DeviceCertificateDto>), ApiError> {
    use platform::device_certificates::{CertificateRequest, issue_certificate};
    caller.require_admin()?;
    let request = match body.parse()? {
        CertificateRequestDto {
            csr_pem: Some(_),
            certificate_pem: Some(_),
        } => {
            return Err(ApiError::bad_request(
                "send csr_pem or certificate_pem, not both",
            ));
        }
        CertificateRequestDto {
            csr_pem: Some(csr), ..
        } => CertificateRequest::Csr(csr),
        CertificateRequestDto {
            certificate_pem: Some(pem),
            ..
        } => CertificateRequest::Existing(pem),
        _ => CertificateRequest::Generate,
    };
    let how = match &request {
        CertificateRequest::Csr(_) => "signed from the device's CSR",
        CertificateRequest::Generate => "generated with its key",
        CertificateRequest::Existing(_) => "registered",
    };
    let issued = issue_certificate(&state.store, &caller.session.scope, id, request).await?;
    caller
        .audit(
            &state,
            "device.certificate",
            format!("device {id} ({})", issued.username),
            None,
            Some(format!(
                "client certificate {how}, sha256 {}",
                issued.certificate_sha256
            )),
        )
        .await?;
    Ok((
        axum::http::StatusCode::CREATED,
        Json(DeviceCertificateDto {
            username: issued.username,
            certificate_pem: issued.certificate_pem,
            private_key_pem: issued.private_key_pem,
            ca_pem: issued.ca_pem,
            certificate_sha256: issued.certificate_sha256,
            topic_prefix: issued.topic_prefix,
        }),
    ))
}

#[utoipa::path(
    get,
    path = "/api/v1/device-ca",
    tag = "devices",
    responses(
        (status = 200, description = "the CA that signs device certificates", body = DeviceCaDto),
        (status = 401, description = "not logged in", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn device_ca(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
) -> Result<Json<DeviceCaDto>, ApiError> {
    Ok(Json(DeviceCaDto {
        certificate_pem: platform::device_certificates::device_ca_pem(&state.store).await?,
    }))
}

#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}/metrics",
    tag = "telemetry",
    params(("id" = i64, Path, description = "the object's id")),
    responses(
        (status = 200, description = "the last reading of each of the device's metrics", body = Vec<LatestReadingDto>),
        (status = 400, description = "invalid request; `errors` names each field", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "not logged in", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such object in the caller's scope", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn device_latest(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
) -> Result<Json<Vec<LatestReadingDto>>, ApiError> {
    let rows = state
        .store
        .latest_readings(&caller.session.scope, id)
        .await?;
    // What this process ingested but has not written yet is newer still.
    let mut latest: std::collections::BTreeMap<String, (i64, f64)> = rows
        .into_iter()
        .map(|r| (r.metric, (r.ts, r.value)))
        .collect();
    if let Some(ingest) = &state.options.ingest {
        for (metric, ts, value) in ingest.latest(id) {
            let entry = latest.entry(metric).or_insert((ts, value));
            if ts >= entry.0 {
                *entry = (ts, value);
            }
        }
    }
    Ok(Json(
        latest
            .into_iter()
            .map(|(metric, (ts, value))| LatestReadingDto { metric, ts, value })
            .collect(),
    ))
}

#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}/metrics/{metric}",
    tag = "telemetry",
    params(
        ("id" = i64, Path, description = "the object's id"),
        ("metric" = String, Path, description = "a metric name, e.g. `cpu.usage_percent`"),
        SeriesQuery
    ),
    responses(
        (status = 200, description = "the series at the chosen resolution", body = SeriesDto),
        (status = 400, description = "invalid request; `errors` names each field", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "not logged in", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such object in the caller's scope", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn device_series(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    path: Result<Path<(i64, String)>, PathRejection>,
    q: Result<Query<SeriesQuery>, QueryRejection>,
) -> Result<Json<SeriesDto>, ApiError> {
    let Path((id, metric)) = path.map_err(|e| ApiError::field("id", id_problem(&e)))?;
    let q = query(q)?;
    let to = q.to.unwrap_or_else(|| store::now_millis() + 1);
    let from = q.from.unwrap_or(to.saturating_sub(24 * 3600 * 1000));
    if from >= to {
        return Err(ApiError::field("from", "must be before to"));
    }
    // Any two i64 have a difference that fits in i128: no overflow from
    // extreme values a client may send.
    let span = i128::from(to) - i128::from(from);
    let step = match q.step {
        Some(step) if step < 1000 => {
            return Err(ApiError::field("step", "must be at least 1000 ms"));
        }
        Some(step) => step,
        None => i64::try_from(span / 300).unwrap_or(i64::MAX).max(1000),
    };
    if span / i128::from(step) > 10_000 {
        return Err(ApiError::field(
            "step",
            "gives more than 10000 points over this range",
        ));
    }
    let points = state
        .store
        .series(&caller.session.scope, id, &metric, from, to, step)
        .await?;
    Ok(Json(SeriesDto {
        metric,
        from,
        to,
        step,
        points: points
            .into_iter()
            .map(|p| SeriesPointDto {
                ts: p.ts,
                min: p.min,
                max: p.max,
                mean: p.mean,
                count: p.count,
            })
            .collect(),
    }))
}

#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}/logs",
    tag = "telemetry",
    params(("id" = i64, Path, description = "the object's id"), LogListQuery),
    responses(
        (status = 200, description = "the device's syslog and dmesg lines, newest first", body = Vec<LogLineDto>),
        (status = 400, description = "invalid request; `errors` names each field", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "not logged in", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such object in the caller's scope", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn device_logs(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
    q: Result<Query<LogListQuery>, QueryRejection>,
) -> Result<Json<Vec<LogLineDto>>, ApiError> {
    let q = query(q)?;
    if let Some(stream) = &q.stream
        && stream != "syslog"
        && stream != "dmesg"
    {
        return Err(ApiError::field("stream", "must be syslog or dmesg"));
    }
    let lines = state
        .store
        .device_logs(
            &caller.session.scope,
            id,
            &store::LogQuery {
                stream: q.stream,
                search: q.search,
                from: q.from,
                to: q.to,
                before_id: q.before_id,
                limit: page_limit(q.limit, 100, 1000)?,
            },
        )
        .await?;
    Ok(Json(
        lines
            .into_iter()
            .map(|l| LogLineDto {
                id: l.id,
                stream: l.stream,
                ts: l.ts,
                line: l.line,
            })
            .collect(),
    ))
}

#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}/telemetry-faults",
    tag = "telemetry",
    params(("id" = i64, Path, description = "the object's id")),
    responses(
        (status = 200, description = "how many of the device's messages broke the contract, and the last error", body = TelemetryFaultsDto),
        (status = 400, description = "invalid request; `errors` names each field", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "not logged in", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such object in the caller's scope", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn device_faults(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
) -> Result<Json<TelemetryFaultsDto>, ApiError> {
    let fault = state
        .store
        .telemetry_fault(&caller.session.scope, id)
        .await?;
    Ok(Json(TelemetryFaultsDto {
        count: fault.as_ref().map_or(0, |f| f.count),
        last_error: fault.as_ref().map(|f| f.last_error.clone()),
        last_at: fault.map(|f| f.last_at),
    }))
}

#[utoipa::path(
    get,
    path = "/api/v1/alarm-rules",
    tag = "alarms",
    responses(
        (status = 200, description = "the alarm rules of the caller's organisations", body = Vec<AlarmRuleDto>),
        (status = 401, description = "not logged in", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn list_alarm_rules(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Vec<AlarmRuleDto>>, ApiError> {
    let rules = state.store.alarm_rules(&caller.session.scope).await?;
    Ok(Json(rules.into_iter().map(Into::into).collect()))
}

fn check_rule(r: &NewAlarmRuleDto) -> Vec<crate::error::FieldError> {
    let mut errors = Vec::new();
    let mut bad = |field: &str, message: &str| {
        errors.push(crate::error::FieldError {
            field: field.into(),
            message: message.into(),
        })
    };
    if r.name.trim().is_empty() {
        bad("name", "must not be empty");
    }
    if !["critical", "major", "minor", "warning"].contains(&r.severity.as_str()) {
        bad("severity", "must be critical, major, minor or warning");
    }
    if !(0..=604_800).contains(&r.duration_secs) {
        bad("duration_secs", "must be 0 to 604800 (a week)");
    }
    match r.kind.as_str() {
        "threshold" => {
            if r.metric.as_deref().is_none_or(|m| m.trim().is_empty()) {
                bad("metric", "a threshold rule needs a metric");
            }
            if !matches!(r.comparison.as_deref(), Some(">") | Some("<")) {
                bad("comparison", "must be > or <");
            }
            if r.threshold.is_none_or(|t| !t.is_finite()) {
                bad("threshold", "a threshold rule needs a number");
            }
        }
        "offline" => {}
        "firmware" => {
            if r.expected_firmware
                .as_deref()
                .is_none_or(|v| v.trim().is_empty())
            {
                bad(
                    "expected_firmware",
                    "a firmware rule needs the expected version",
                );
            }
        }
        _ => bad("kind", "must be threshold, offline or firmware"),
    }
    errors
}

#[utoipa::path(
    post,
    path = "/api/v1/alarm-rules",
    tag = "alarms",
    request_body = NewAlarmRuleDto,
    responses(
        (status = 201, description = "created; it applies at once", body = AlarmRuleDto),
        (status = 400, description = "invalid request; `errors` names each field", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "not logged in", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller's role may not do this, or a missing CSRF token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such organisation in the caller's scope, or no such model", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn create_alarm_rule(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    body: JsonObject<NewAlarmRuleDto>,
) -> Result<(axum::http::StatusCode, Json<AlarmRuleDto>), ApiError> {
    caller.require_admin()?;
    let r = body.parse()?;
    let errors = check_rule(&r);
    if !errors.is_empty() {
        return Err(ApiError::BadRequest {
            detail: "the alarm rule is not valid".into(),
            errors,
        });
    }
    let rule = state
        .store
        .create_alarm_rule(
            &caller.session.scope,
            &store::NewAlarmRule {
                organisation_id: r.organisation_id,
                model_id: r.model_id,
                name: r.name.trim().to_owned(),
                kind: r.kind,
                metric: r.metric,
                comparison: r.comparison,
                threshold: r.threshold,
                duration_secs: r.duration_secs,
                expected_firmware: r.expected_firmware,
                severity: r.severity,
            },
        )
        .await?;
    refresh_alarm_rules(&state).await;
    let dto = AlarmRuleDto::from(rule);
    let target = format!("alarm rule {} ({})", dto.id, dto.name);
    caller
        .created(&state, "alarm_rule.create", target, dto)
        .await
}

async fn refresh_alarm_rules(state: &AppState) {
    if let Some(engine) = &state.options.alarms
        && let Err(e) = engine.refresh_rules().await
    {
        tracing::warn!(error = %e, "alarm rules not reloaded; the periodic pass will");
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/alarm-rules/{id}/state",
    tag = "alarms",
    params(("id" = i64, Path, description = "the object's id")),
    request_body = RuleStateDto,
    responses(
        (status = 200, description = "the rule after the change", body = AlarmRuleDto),
        (status = 400, description = "invalid request; `errors` names each field", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "not logged in", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller's role may not do this, or a missing CSRF token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such object in the caller's scope", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn set_alarm_rule_state(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
    body: JsonObject<RuleStateDto>,
) -> Result<Json<AlarmRuleDto>, ApiError> {
    caller.require_admin()?;
    let request = body.parse()?;
    let rule = state
        .store
        .set_alarm_rule_enabled(&caller.session.scope, id, request.enabled)
        .await?;
    refresh_alarm_rules(&state).await;
    caller
        .audit(
            &state,
            if request.enabled {
                "alarm_rule.enable"
            } else {
                "alarm_rule.disable"
            },
            format!("alarm rule {id} ({})", rule.name),
            Some(format!("enabled={}", !request.enabled)),
            Some(format!("enabled={}", request.enabled)),
        )
        .await?;
    Ok(Json(rule.into()))
}

#[utoipa::path(
    get,
    path = "/api/v1/alarms",
    tag = "alarms",
    params(AlarmListQuery),
    responses(
        (status = 200, description = "alarms, newest first", body = Vec<AlarmDto>),
        (status = 400, description = "invalid request; `errors` names each field", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "not logged in", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn list_alarms(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    q: Result<Query<AlarmListQuery>, QueryRejection>,
) -> Result<Json<Vec<AlarmDto>>, ApiError> {
    let q = query(q)?;
    if let Some(s) = &q.state
        && !["open", "active", "acknowledged", "cleared"].contains(&s.as_str())
    {
        return Err(ApiError::field(
            "state",
            "must be open, active, acknowledged or cleared",
        ));
    }
    let alarms = state
        .store
        .alarms(
            &caller.session.scope,
            &store::AlarmQuery {
                state: q.state,
                device_id: q.device_id,
                before_id: q.before_id,
                limit: page_limit(q.limit, 100, 1000)?,
            },
        )
        .await?;
    Ok(Json(alarms.into_iter().map(Into::into).collect()))
}

#[utoipa::path(
    post,
    path = "/api/v1/alarms/{id}/acknowledge",
    tag = "alarms",
    params(("id" = i64, Path, description = "the object's id")),
    responses(
        (status = 200, description = "the alarm, acknowledged", body = AlarmDto),
        (status = 400, description = "invalid request; `errors` names each field", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "not logged in", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "viewers cannot acknowledge, or a missing CSRF token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such object in the caller's scope", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "the alarm is not active", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn acknowledge_alarm(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
) -> Result<Json<AlarmDto>, ApiError> {
    // Engineers work alarms; viewers only look.
    if caller.session.role == Role::Viewer {
        return Err(ApiError::Forbidden(
            "the viewer role cannot acknowledge alarms".into(),
        ));
    }
    let alarm = state
        .store
        .acknowledge_alarm(&caller.session.scope, id, &caller.session.user.username)
        .await?;
    caller
        .audit(
            &state,
            "alarm.acknowledge",
            format!("alarm {id} on device {}", alarm.device_id),
            Some("active".into()),
            Some("acknowledged".into()),
        )
        .await?;
    if let Some(engine) = &state.options.alarms
        && let Ok(Some(device)) = state.store.device_context(alarm.device_id).await
    {
        let rule_name = state
            .store
            .alarm_rule(&caller.session.scope, alarm.rule_id)
            .await
            .map(|r| r.name)
            .unwrap_or_default();
        engine.notify(platform::alarms::AlarmEvent {
            kind: "acknowledged",
            alarm: alarm.clone(),
            rule_name,
            organisation_path: device.organisation_path,
        });
    }
    Ok(Json(alarm.into()))
}

#[utoipa::path(
    get,
    path = "/api/v1/webhooks",
    tag = "alarms",
    responses(
        (status = 200, description = "webhooks of the caller's organisations, without their secrets", body = Vec<WebhookDto>),
        (status = 401, description = "not logged in", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller's role may not do this", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn list_webhooks(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Vec<WebhookDto>>, ApiError> {
    caller.require_admin()?;
    let hooks = state.store.webhooks(&caller.session.scope).await?;
    Ok(Json(
        hooks
            .into_iter()
            .map(|w| WebhookDto {
                id: w.id,
                organisation_id: w.organisation_id,
                url: w.url,
                secret: None,
                created_at: w.created_at,
            })
            .collect(),
    ))
}

#[utoipa::path(
    post,
    path = "/api/v1/webhooks",
    tag = "alarms",
    request_body = NewWebhookDto,
    responses(
        (status = 201, description = "created; its signing secret is shown once", body = WebhookDto),
        (status = 400, description = "invalid request; `errors` names each field", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "not logged in", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller's role may not do this, or a missing CSRF token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such organisation in the caller's scope", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn create_webhook(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    body: JsonObject<NewWebhookDto>,
) -> Result<(axum::http::StatusCode, Json<WebhookDto>), ApiError> {
    caller.require_admin()?;
    let request = body.parse()?;
    let url = request.url.trim();
    if !(url.starts_with("http://") || url.starts_with("https://"))
        || url.len() > 2000
        || url.contains(char::is_whitespace)
    {
        return Err(ApiError::field("url", "must be an http:// or https:// URL"));
    }
    let secret = accounts::new_token();
    let hook = state
        .store
        .create_webhook(&caller.session.scope, request.organisation_id, url, &secret)
        .await?;
    caller
        .audit(
            &state,
            "webhook.create",
            format!("webhook {} ({})", hook.id, hook.url),
            None,
            Some(format!("organisation {}", hook.organisation_id)),
        )
        .await?;
    Ok((
        axum::http::StatusCode::CREATED,
        Json(WebhookDto {
            id: hook.id,
            organisation_id: hook.organisation_id,
            url: hook.url,
            secret: Some(secret),
            created_at: hook.created_at,
        }),
    ))
}

#[utoipa::path(
    delete,
    path = "/api/v1/webhooks/{id}",
    tag = "alarms",
    params(("id" = i64, Path, description = "the object's id")),
    responses(
        (status = 204, description = "deleted"),
        (status = 400, description = "invalid request; `errors` names each field", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "not logged in", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller's role may not do this, or a missing CSRF token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such object in the caller's scope", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn delete_webhook(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
) -> Result<axum::http::StatusCode, ApiError> {
    caller.require_admin()?;
    state
        .store
        .delete_webhook(&caller.session.scope, id)
        .await?;
    caller
        .audit(
            &state,
            "webhook.delete",
            format!("webhook {id}"),
            None,
            None,
        )
        .await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}/live",
    tag = "telemetry",
    description = "A WebSocket (send `Upgrade: websocket`): one text message per reading as the platform ingests it, `{\"metric\", \"ts\", \"value\"}`.",
    params(("id" = i64, Path, description = "the object's id")),
    responses(
        (status = 101, description = "switching to the WebSocket protocol"),
        (status = 400, description = "not a WebSocket request, or a bad id", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "not logged in", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such object in the caller's scope", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn device_live(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
    upgrade: Result<
        axum::extract::ws::WebSocketUpgrade,
        axum::extract::ws::rejection::WebSocketUpgradeRejection,
    >,
) -> Result<Response, ApiError> {
    state.store.device(&caller.session.scope, id).await?;
    let upgrade = upgrade.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let Some(ingest) = state.options.ingest.clone() else {
        return Err(ApiError::NotFound(
            "this server ingests no telemetry".into(),
        ));
    };
    let mut readings = ingest.subscribe_live();
    Ok(upgrade.on_upgrade(move |mut socket| async move {
        use axum::extract::ws::Message;
        use tokio::sync::broadcast::error::RecvError;
        loop {
            tokio::select! {
                reading = readings.recv() => match reading {
                    Ok(r) if r.device_id == id => {
                        let text = serde_json::json!({"metric": r.metric, "ts": r.ts, "value": r.value}).to_string();
                        if socket.send(Message::Text(text.into())).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    // A slow viewer skips readings rather than slowing the ingest.
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                },
                incoming = socket.recv() => match incoming {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => {}
                },
            }
        }
    }))
}

#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}/presence",
    tag = "telemetry",
    params(("id" = i64, Path, description = "the object's id"), PresenceQuery),
    responses(
        (status = 200, description = "the device's connects and disconnects, newest first", body = Vec<PresenceChangeDto>),
        (status = 400, description = "invalid request; `errors` names each field", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "not logged in", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such object in the caller's scope", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn device_presence(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
    q: Result<Query<PresenceQuery>, QueryRejection>,
) -> Result<Json<Vec<PresenceChangeDto>>, ApiError> {
    let q = query(q)?;
    let changes = state
        .store
        .presence_history(
            &caller.session.scope,
            id,
            q.before_id,
            page_limit(q.limit, 100, 1000)?,
        )
        .await?;
    Ok(Json(
        changes
            .into_iter()
            .map(|c| PresenceChangeDto {
                id: c.id,
                online: c.online,
                at: c.at,
            })
            .collect(),
    ))
}

async fn audit_entries(
    state: &AppState,
    caller: &Caller,
    q: AuditListQuery,
) -> Result<Vec<store::AuditEntry>, ApiError> {
    caller.require_admin()?;
    let limit = page_limit(q.limit, 100, 10_000)?;
    Ok(state
        .store
        .audit_log(
            &caller.session.scope,
            &store::AuditQuery {
                search: q.search,
                before_id: q.before_id,
                limit,
            },
        )
        .await?)
}

#[utoipa::path(
    get,
    path = "/api/v1/audit",
    tag = "audit",
    params(AuditListQuery),
    responses(
        (status = 200, description = "system log entries, newest first", body = Vec<AuditEntryDto>),
        (status = 400, description = "invalid request; `errors` names each field", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "not logged in", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller's role may not do this, or a missing CSRF token", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn audit_log(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    q: Result<Query<AuditListQuery>, QueryRejection>,
) -> Result<Json<Vec<AuditEntryDto>>, ApiError> {
    let entries = audit_entries(&state, &caller, query(q)?).await?;
    Ok(Json(entries.into_iter().map(Into::into).collect()))
}

#[utoipa::path(
    get,
    path = "/api/v1/audit.csv",
    tag = "audit",
    params(AuditListQuery),
    responses(
        (status = 200, description = "the system log as CSV", content_type = "text/csv", body = String),
        (status = 400, description = "invalid request; `errors` names each field", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "not logged in", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller's role may not do this, or a missing CSRF token", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
/// The log as CSV, for a spreadsheet or an auditor.
async fn audit_csv(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    q: Result<Query<AuditListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let mut q = query(q)?;
    q.limit = Some(q.limit.unwrap_or(10_000));
    let entries = audit_entries(&state, &caller, q).await?;
    fn cell(v: &str) -> String {
        if v.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", v.replace('"', "\"\""))
        } else {
            v.to_owned()
        }
    }
    let mut out =
        String::from("id,created_at,organisation_id,actor,action,target,before,after,address\n");
    for e in entries {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{}\n",
            e.id,
            e.created_at,
            e.organisation_id,
            cell(&e.actor),
            cell(&e.action),
            cell(&e.target),
            cell(e.before_value.as_deref().unwrap_or("")),
            cell(e.after_value.as_deref().unwrap_or("")),
            cell(e.address.as_deref().unwrap_or(""))
        ));
    }
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"telemark-audit.csv\"",
            ),
        ],
        out,
    )
        .into_response())
}

#[utoipa::path(
    get,
    path = "/api/v1/users",
    tag = "users",
    responses(
        (status = 200, description = "users of the caller's organisations", body = Vec<UserDto>),
        (status = 401, description = "not logged in", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller's role may not do this, or a missing CSRF token", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn list_users(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Vec<UserDto>>, ApiError> {
    caller.require_admin()?;
    let users = state.store.users(&caller.session.scope).await?;
    Ok(Json(users.into_iter().map(Into::into).collect()))
}

#[utoipa::path(
    post,
    path = "/api/v1/users",
    tag = "users",
    request_body = NewUserDto,
    responses(
        (status = 201, description = "created", body = UserDto),
        (status = 400, description = "invalid request; `errors` names each field", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "not logged in", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller's role may not do this, or a missing CSRF token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such object in the caller's scope", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "conflicts with the current state", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn create_user(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    body: JsonObject<NewUserDto>,
) -> Result<(axum::http::StatusCode, Json<UserDto>), ApiError> {
    caller.require_admin()?;
    let request = body.parse()?;
    let user = accounts::create_user(
        &state.store,
        &caller.session,
        request.organisation_id,
        &request.username,
        &request.password,
        &request.role,
    )
    .await?;
    let dto = UserDto::from(user);
    caller
        .audit(
            &state,
            "user.create",
            format!("user {} ({})", dto.id, dto.username),
            None,
            Some(format!(
                "role {} in organisation {}",
                dto.role, dto.organisation_id
            )),
        )
        .await?;
    Ok((axum::http::StatusCode::CREATED, Json(dto)))
}

#[utoipa::path(
    post,
    path = "/api/v1/users/{id}/state",
    tag = "users",
    params(("id" = i64, Path, description = "the object's id")),
    request_body = UserStateDto,
    responses(
        (status = 200, description = "the user after the change", body = UserDto),
        (status = 400, description = "invalid request; `errors` names each field", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "not logged in", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller's role may not do this, or a missing CSRF token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such object in the caller's scope", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn set_user_state(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
    body: JsonObject<UserStateDto>,
) -> Result<Json<UserDto>, ApiError> {
    caller.require_admin()?;
    let request = body.parse()?;
    if id == caller.session.user.id && request.disabled {
        return Err(ApiError::bad_request("you cannot disable yourself"));
    }
    let before = state.store.user(&caller.session.scope, id).await?;
    state
        .store
        .set_user_disabled(&caller.session.scope, id, request.disabled)
        .await?;
    caller
        .audit(
            &state,
            if request.disabled {
                "user.disable"
            } else {
                "user.enable"
            },
            format!("user {id} ({})", before.username),
            Some(format!("disabled={}", before.disabled)),
            Some(format!("disabled={}", request.disabled)),
        )
        .await?;
    Ok(Json(
        state.store.user(&caller.session.scope, id).await?.into(),
    ))
}

#[utoipa::path(
    post,
    path = "/api/v1/session/password",
    tag = "session",
    request_body = PasswordChangeDto,
    responses(
        (status = 204, description = "password changed"),
        (status = 400, description = "invalid request; `errors` names each field", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "not logged in", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller's role may not do this, or a missing CSRF token", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn change_password(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    body: JsonObject<PasswordChangeDto>,
) -> Result<axum::http::StatusCode, ApiError> {
    let request = body.parse()?;
    match accounts::change_password(
        &state.store,
        &caller.session,
        &request.current_password,
        &request.new_password,
    )
    .await
    {
        Ok(()) => {}
        Err(accounts::AccountError::BadCredentials) => {
            return Err(ApiError::field(
                "current_password",
                "is not the current password",
            ));
        }
        Err(e) => return Err(e.into()),
    }
    caller
        .audit(
            &state,
            "user.password",
            format!("user {}", caller.session.user.id),
            None,
            None,
        )
        .await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/api/v1/service-models",
    tag = "licenses",
    responses(
        (status = 200, description = "service models (plans)", body = Vec<ServiceModelDto>),
        (status = 401, description = "not logged in", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn list_service_models(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
) -> Result<Json<Vec<ServiceModelDto>>, ApiError> {
    Ok(Json(
        state
            .store
            .service_models()
            .await?
            .into_iter()
            .map(Into::into)
            .collect(),
    ))
}

#[utoipa::path(
    post,
    path = "/api/v1/service-models",
    tag = "licenses",
    request_body = NewServiceModelDto,
    responses(
        (status = 201, description = "created", body = ServiceModelDto),
        (status = 400, description = "invalid request; `errors` names each field", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "not logged in", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller's role may not do this, or a missing CSRF token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "conflicts with the current state", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn create_service_model(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    body: JsonObject<NewServiceModelDto>,
) -> Result<(axum::http::StatusCode, Json<ServiceModelDto>), ApiError> {
    if caller.session.role != Role::OperatorAdmin {
        return Err(ApiError::Forbidden(
            "only the operator manages service models".into(),
        ));
    }
    let m = body.parse()?;
    if m.name.trim().is_empty() {
        return Err(ApiError::field("name", "must not be empty"));
    }
    if !(1..=36_500).contains(&m.duration_days) {
        return Err(ApiError::field("duration_days", "must be 1 to 36500"));
    }
    let model = state
        .store
        .create_service_model(m.name.trim(), &m.features, m.duration_days)
        .await?;
    let dto = ServiceModelDto::from(model);
    caller
        .audit(
            &state,
            "service_model.create",
            format!("service model {} ({})", dto.id, dto.name),
            None,
            None,
        )
        .await?;
    Ok((axum::http::StatusCode::CREATED, Json(dto)))
}

#[utoipa::path(
    get,
    path = "/api/v1/license-keys",
    tag = "licenses",
    params(LicenseListQuery),
    responses(
        (status = 200, description = "license keys", body = Vec<LicenseKeyDto>),
        (status = 400, description = "invalid request; `errors` names each field", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "not logged in", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn list_license_keys(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    q: Result<Query<LicenseListQuery>, QueryRejection>,
) -> Result<Json<Vec<LicenseKeyDto>>, ApiError> {
    let q = query(q)?;
    let keys = state
        .store
        .license_keys(
            &caller.session.scope,
            &store::LicenseQuery {
                state: q.state,
                after_id: q.after_id,
                limit: page_limit(q.limit, 100, 1000)?,
            },
        )
        .await?;
    Ok(Json(keys.into_iter().map(Into::into).collect()))
}

#[utoipa::path(
    post,
    path = "/api/v1/license-keys",
    tag = "licenses",
    request_body = GenerateKeysDto,
    responses(
        (status = 201, description = "the new keys", body = Vec<LicenseKeyDto>),
        (status = 400, description = "invalid request; `errors` names each field", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "not logged in", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller's role may not do this, or a missing CSRF token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such object in the caller's scope", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn generate_license_keys(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    body: JsonObject<GenerateKeysDto>,
) -> Result<(axum::http::StatusCode, Json<Vec<LicenseKeyDto>>), ApiError> {
    caller.require_admin()?;
    let g = body.parse()?;
    let keys = platform::licensing::generate(
        &state.store,
        &caller.session.scope,
        g.organisation_id,
        g.service_model_id,
        g.count,
    )
    .await?;
    caller
        .audit(
            &state,
            "license.generate",
            format!("organisation {}", g.organisation_id),
            None,
            Some(format!(
                "{} keys of service model {}",
                keys.len(),
                g.service_model_id
            )),
        )
        .await?;
    Ok((
        axum::http::StatusCode::CREATED,
        Json(keys.into_iter().map(Into::into).collect()),
    ))
}

#[utoipa::path(
    post,
    path = "/api/v1/license-keys/{id}/bind",
    tag = "licenses",
    params(("id" = i64, Path, description = "the object's id")),
    request_body = BindDto,
    responses(
        (status = 200, description = "the key, bound", body = LicenseKeyDto),
        (status = 400, description = "invalid request; `errors` names each field", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "not logged in", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller's role may not do this, or a missing CSRF token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such object in the caller's scope", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "conflicts with the current state", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn bind_license(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
    body: JsonObject<BindDto>,
) -> Result<Json<LicenseKeyDto>, ApiError> {
    caller.require_admin()?;
    let b = body.parse()?;
    let key =
        platform::licensing::bind(&state.store, &caller.session.scope, id, b.device_id).await?;
    caller
        .audit(
            &state,
            "license.bind",
            format!("license key {id} ({})", key.license_key),
            Some("available".into()),
            Some(format!("bound to device {}", b.device_id)),
        )
        .await?;
    Ok(Json(key.into()))
}

#[utoipa::path(
    post,
    path = "/api/v1/license-keys/{id}/unbind",
    tag = "licenses",
    params(("id" = i64, Path, description = "the object's id")),
    responses(
        (status = 200, description = "the key, available again", body = LicenseKeyDto),
        (status = 400, description = "invalid request; `errors` names each field", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "not logged in", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller's role may not do this, or a missing CSRF token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such object in the caller's scope", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "conflicts with the current state", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn unbind_license(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
) -> Result<Json<LicenseKeyDto>, ApiError> {
    caller.require_admin()?;
    let before = state.store.license_key(&caller.session.scope, id).await?;
    let key = platform::licensing::unbind(&state.store, &caller.session.scope, id).await?;
    caller
        .audit(
            &state,
            "license.unbind",
            format!("license key {id} ({})", key.license_key),
            before.device_id.map(|d| format!("bound to device {d}")),
            Some("available".into()),
        )
        .await?;
    Ok(Json(key.into()))
}

#[utoipa::path(
    post,
    path = "/api/v1/license-keys/{id}/revoke",
    tag = "licenses",
    params(("id" = i64, Path, description = "the object's id")),
    responses(
        (status = 200, description = "the key, revoked", body = LicenseKeyDto),
        (status = 400, description = "invalid request; `errors` names each field", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "not logged in", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller's role may not do this, or a missing CSRF token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such object in the caller's scope", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "conflicts with the current state", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn revoke_license(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
) -> Result<Json<LicenseKeyDto>, ApiError> {
    caller.require_admin()?;
    let before = state.store.license_key(&caller.session.scope, id).await?;
    let key = platform::licensing::revoke(&state.store, &caller.session.scope, id).await?;
    caller
        .audit(
            &state,
            "license.revoke",
            format!("license key {id} ({})", key.license_key),
            Some(before.state),
            Some("revoked".into()),
        )
        .await?;
    Ok(Json(key.into()))
}

#[utoipa::path(
    get,
    path = "/api/v1/license/public-key",
    tag = "licenses",
    responses(
        (status = 200, description = "the ed25519 key devices verify license tokens with", body = PublicKeyDto)
    ),
    security(())
)]
/// Public: devices verify license tokens offline with this key.
async fn license_public_key(
    State(state): State<Arc<AppState>>,
) -> Result<Json<PublicKeyDto>, ApiError> {
    Ok(Json(PublicKeyDto {
        algorithm: "ed25519",
        public_key: platform::licensing::public_key(&state.store).await?,
    }))
}

#[utoipa::path(
    get,
    path = "/api/v1/tokens",
    tag = "session",
    responses(
        (status = 200, description = "the caller's API tokens, without their secrets", body = Vec<ApiTokenDto>),
        (status = 401, description = "not logged in", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn list_api_tokens(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Vec<ApiTokenDto>>, ApiError> {
    let tokens = state.store.api_tokens(caller.session.user.id).await?;
    Ok(Json(tokens.into_iter().map(Into::into).collect()))
}

#[utoipa::path(
    post,
    path = "/api/v1/tokens",
    tag = "session",
    request_body = NewApiTokenDto,
    responses(
        (status = 201, description = "the token; its secret is shown once", body = ApiTokenDto),
        (status = 400, description = "invalid request; `errors` names each field", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "not logged in", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller's role may not do this, or a missing CSRF token", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn create_api_token(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    body: JsonObject<NewApiTokenDto>,
) -> Result<(axum::http::StatusCode, Json<ApiTokenDto>), ApiError> {
    let request = body.parse()?;
    let (row, token) =
        accounts::create_api_token(&state.store, &caller.session, &request.name).await?;
    caller
        .audit(
            &state,
            "token.create",
            format!("API token {} ({})", row.id, row.name),
            None,
            None,
        )
        .await?;
    let mut dto = ApiTokenDto::from(row);
    dto.token = Some(token);
    Ok((axum::http::StatusCode::CREATED, Json(dto)))
}

#[utoipa::path(
    delete,
    path = "/api/v1/tokens/{id}",
    tag = "session",
    params(("id" = i64, Path, description = "the object's id")),
    responses(
        (status = 204, description = "revoked"),
        (status = 400, description = "invalid request; `errors` names each field", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "not logged in", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "the caller's role may not do this, or a missing CSRF token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such object in the caller's scope", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn revoke_api_token(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
) -> Result<axum::http::StatusCode, ApiError> {
    if !state
        .store
        .revoke_api_token(caller.session.user.id, id)
        .await?
    {
        return Err(ApiError::NotFound(format!("API token {id}")));
    }
    caller
        .audit(
            &state,
            "token.revoke",
            format!("API token {id}"),
            None,
            None,
        )
        .await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}
