//! hawkBit's Direct Device Integration API, under
//! `/{tenant}/controller/v1/{controllerId}`, for devices that run a
//! standard update client (SWUpdate's suricatta, rauc-hawkbit-updater)
//! instead of Telemark's agent. The rules are in `platform::ddi`; the
//! documents are shaped as hawkBit sends them, because clients parse them
//! by hand: numeric action ids, `hashes` with sha1, md5 and sha256, both
//! `download` and `download-http` links, status 200 on every call.
//!
//! hawkBit documents this API itself, so it stays out of Telemark's
//! OpenAPI document; `docs/ddi.md` says what of it is served.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use device_protocol::task::TaskTopic;
use platform::ddi::{self, Feedback};
use serde_json::{Value, json};
use store::{DdiAction, DdiDevice};

use crate::{ApiError, AppState};

/// How often a client polls when the configuration does not say.
pub const DEFAULT_POLL_SECS: u64 = 300;
/// Most attributes a client may keep through configData, and their size.
const MAX_ATTRIBUTES: usize = 100;
const MAX_ATTRIBUTE_BYTES: usize = 1024;

const BASE: &str = "/{tenant}/controller/v1/{controller}";

pub(super) fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route(BASE, get(base_poll))
        .route(
            &format!("{BASE}/deploymentBase/{{action}}"),
            get(deployment),
        )
        .route(
            &format!("{BASE}/deploymentBase/{{action}}/feedback"),
            post(deployment_feedback),
        )
        .route(&format!("{BASE}/installedBase/{{action}}"), get(installed))
        .route(&format!("{BASE}/configData"), put(config_data))
        .route(
            &format!("{BASE}/cancelAction/{{action}}"),
            get(cancel_action),
        )
        .route(
            &format!("{BASE}/cancelAction/{{action}}/feedback"),
            post(cancel_feedback),
        )
        .route(
            &format!("{BASE}/softwaremodules/{{module}}/artifacts"),
            get(artifacts),
        )
        .route(
            &format!("{BASE}/softwaremodules/{{module}}/artifacts/{{file}}"),
            get(artifact_file),
        )
}

/// The target a request is about, authenticated.
struct Target {
    device: DdiDevice,
    /// `scheme://host/{tenant}/controller/v1/{controller}` for links.
    base: String,
}

async fn target(
    state: &AppState,
    headers: &HeaderMap,
    tenant: &str,
    controller: &str,
) -> Result<Target, ApiError> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let device = ddi::authenticate(&state.store, tenant, controller, authorization).await?;
    // Links point back at the address the client used, as hawkBit's do.
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or("localhost");
    let scheme = match headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
    {
        Some("https") => "https",
        Some("http") => "http",
        _ if state.options.secure_cookie => "https",
        _ => "http",
    };
    Ok(Target {
        base: format!("{scheme}://{host}/{tenant}/controller/v1/{controller}"),
        device,
    })
}

fn action_id(text: &str) -> Result<i64, ApiError> {
    text.parse()
        .ok()
        .filter(|id: &i64| *id > 0)
        .ok_or_else(|| ApiError::bad_request("an action id is a positive number"))
}

fn poll_secs(state: &AppState) -> u64 {
    match state.options.ddi_poll_secs {
        0 => DEFAULT_POLL_SECS,
        secs => secs,
    }
}

async fn base_poll(
    State(state): State<Arc<AppState>>,
    Path((tenant, controller)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let t = target(&state, &headers, &tenant, &controller).await?;
    let store = &state.store;
    store.ddi_polled(t.device.id).await?;
    let mut links = serde_json::Map::new();
    if let Some(cancelled) = store.ddi_cancelled_action(t.device.id).await? {
        links.insert(
            "cancelAction".into(),
            json!({"href": format!("{}/cancelAction/{cancelled}", t.base)}),
        );
    } else if let Some(action) = store
        .ddi_open_action(t.device.id, store::now_millis())
        .await?
    {
        // `c` changes with each attempt, so a client that caches the
        // document by its address sees a retried action as new.
        links.insert(
            "deploymentBase".into(),
            json!({"href": format!("{}/deploymentBase/{}?c={}", t.base, action.id, action.attempt.max(1))}),
        );
    }
    if let Some(installed) = store.ddi_installed_action(t.device.id).await? {
        links.insert(
            "installedBase".into(),
            json!({"href": format!("{}/installedBase/{}", t.base, installed.id)}),
        );
    }
    if store.ddi_attributes(t.device.id).await?.is_none() {
        links.insert(
            "configData".into(),
            json!({"href": format!("{}/configData", t.base)}),
        );
    }
    Ok(Json(json!({
        "config": {"polling": {"sleep": ddi::sleep_text(poll_secs(&state))}},
        "_links": links,
    })))
}

/// An image as a hawkBit artifact: hashes for every client, and both link
/// names (clients built for HTTPS look for `download`, others for
/// `download-http`).
fn artifact(t: &Target, image: &store::FirmwareImage) -> Value {
    let file = format!(
        "{}/softwaremodules/{}/artifacts/{}",
        t.base, image.id, image.file_name
    );
    json!({
        "filename": image.file_name,
        "hashes": {"sha1": image.sha1, "md5": image.md5, "sha256": image.sha256},
        "size": image.size,
        "_links": {
            "download": {"href": file},
            "download-http": {"href": file},
            "md5sum": {"href": format!("{file}.MD5SUM")},
            "md5sum-http": {"href": format!("{file}.MD5SUM")},
        }
    })
}

/// The action as hawkBit describes a deployment: one chunk, one artifact.
async fn deployment_document(
    state: &AppState,
    t: &Target,
    action: &DdiAction,
) -> Result<Value, ApiError> {
    let update = ddi::action_update(action)?;
    let image = state.store.firmware_image_by_id(update.image).await?;
    let name = image
        .file_name
        .rsplit_once('.')
        .map_or(image.file_name.as_str(), |(stem, _)| stem);
    let history = match action.state.as_str() {
        "queued" | "sent" => "scheduled",
        "in_progress" => "proceeding",
        "succeeded" => "finished",
        "cancelled" => "canceled",
        _ => "error",
    };
    Ok(json!({
        "id": action.id.to_string(),
        "deployment": {
            "download": "forced",
            "update": "forced",
            "chunks": [{
                "part": "os",
                "version": image.version,
                "name": name,
                "artifacts": [artifact(t, &image)]
            }]
        },
        "actionHistory": {"status": history, "messages": []},
    }))
}

async fn deployment(
    State(state): State<Arc<AppState>>,
    Path((tenant, controller, action)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let t = target(&state, &headers, &tenant, &controller).await?;
    let id = action_id(&action)?;
    let mut action = state
        .store
        .ddi_action(t.device.id, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no action {id} for this target")))?;
    if action.state == "queued" {
        // The client fetched it: delivered, as a publish to an agent is.
        if let Some(attempt) = state.store.ddi_deliver(id, store::now_millis()).await? {
            action.state = "sent".into();
            action.attempt = attempt;
        }
    }
    Ok(Json(deployment_document(&state, &t, &action).await?))
}

async fn installed(
    State(state): State<Arc<AppState>>,
    Path((tenant, controller, action)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let t = target(&state, &headers, &tenant, &controller).await?;
    let id = action_id(&action)?;
    let action = state
        .store
        .ddi_action(t.device.id, id)
        .await?
        .filter(|a| a.state == "succeeded")
        .ok_or_else(|| ApiError::NotFound(format!("no installed action {id} for this target")))?;
    Ok(Json(deployment_document(&state, &t, &action).await?))
}

fn parse_feedback(body: &Bytes) -> Result<Feedback, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "feedback is {{\"status\": {{\"execution\", \"result\": {{\"finished\"}}, \"details\"}}}}: {e}"
        ))
    })
}

async fn deployment_feedback(
    State(state): State<Arc<AppState>>,
    Path((tenant, controller, action)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let t = target(&state, &headers, &tenant, &controller).await?;
    let id = action_id(&action)?;
    let feedback = parse_feedback(&body)?;
    let store = &state.store;
    let mut action = store
        .ddi_action(t.device.id, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no action {id} for this target")))?;
    if action.state == "queued"
        && let Some(attempt) = store.ddi_deliver(id, store::now_millis()).await?
    {
        action.state = "sent".into();
        action.attempt = attempt;
    }
    if !["sent", "in_progress"].contains(&action.state.as_str()) {
        return Err(ApiError::Conflict(format!(
            "action {id} is {} and takes no more feedback",
            action.state
        )));
    }
    let update = ddi::action_update(&action)?;
    let answer = ddi::answer_for(&action, &feedback, &update.version, store::now_millis())?;
    let tasks = state
        .options
        .tasks
        .as_ref()
        .ok_or_else(|| ApiError::NotFound("this server runs no tasks".into()))?;
    let topic = if answer.state.is_final() {
        TaskTopic::Result(id)
    } else {
        TaskTopic::Status(id)
    };
    // The same path as an agent's answer over MQTT: one set of rules.
    tasks.take_answer(t.device.id, &t.device.mac, topic, answer.to_json().into());
    Ok(StatusCode::OK)
}

async fn config_data(
    State(state): State<Arc<AppState>>,
    Path((tenant, controller)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let t = target(&state, &headers, &tenant, &controller).await?;
    let request: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("configData is JSON: {e}")))?;
    let Some(data) = request.get("data").and_then(Value::as_object) else {
        return Err(ApiError::field(
            "data",
            "an object of attribute names and values",
        ));
    };
    let mode = request
        .get("mode")
        .and_then(Value::as_str)
        .unwrap_or("merge");
    let mut attributes: serde_json::Map<String, Value> = match mode {
        "merge" | "remove" => state
            .store
            .ddi_attributes(t.device.id)
            .await?
            .and_then(|a| serde_json::from_str(&a).ok())
            .unwrap_or_default(),
        "replace" => serde_json::Map::new(),
        other => {
            return Err(ApiError::field(
                "mode",
                format!("{other:?} is none of merge, replace, remove"),
            ));
        }
    };
    for (key, value) in data {
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(_) | Value::Bool(_) => value.to_string(),
            _ => {
                return Err(ApiError::field(
                    "data",
                    format!("{key}: values are strings"),
                ));
            }
        };
        if key.is_empty() || key.len() > 128 || text.len() > MAX_ATTRIBUTE_BYTES {
            return Err(ApiError::field(
                "data",
                format!("{key}: names are 1 to 128 bytes, values at most {MAX_ATTRIBUTE_BYTES}"),
            ));
        }
        if mode == "remove" {
            attributes.remove(key);
        } else {
            attributes.insert(key.clone(), Value::String(text));
        }
    }
    if attributes.len() > MAX_ATTRIBUTES {
        return Err(ApiError::field(
            "data",
            format!("at most {MAX_ATTRIBUTES} attributes"),
        ));
    }
    state
        .store
        .set_ddi_attributes(t.device.id, &Value::Object(attributes).to_string())
        .await?;
    Ok(StatusCode::OK)
}

async fn cancel_action(
    State(state): State<Arc<AppState>>,
    Path((tenant, controller, action)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let t = target(&state, &headers, &tenant, &controller).await?;
    let id = action_id(&action)?;
    if state.store.ddi_cancelled_action(t.device.id).await? != Some(id) {
        return Err(ApiError::NotFound(format!(
            "no cancellation of action {id} waits for this target"
        )));
    }
    Ok(Json(json!({
        "id": id.to_string(),
        "cancelAction": {"stopId": id.to_string()},
    })))
}

async fn cancel_feedback(
    State(state): State<Arc<AppState>>,
    Path((tenant, controller, action)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let t = target(&state, &headers, &tenant, &controller).await?;
    let id = action_id(&action)?;
    parse_feedback(&body)?;
    if state.store.ddi_cancelled_action(t.device.id).await? != Some(id) {
        return Err(ApiError::NotFound(format!(
            "no cancellation of action {id} waits for this target"
        )));
    }
    state.store.ddi_cancel_acknowledged(t.device.id, id).await?;
    Ok(StatusCode::OK)
}

/// An image the target may fetch: one its organisation sees, for its model.
async fn target_image(
    state: &AppState,
    t: &Target,
    module: &str,
) -> Result<store::FirmwareImage, ApiError> {
    let id = action_id(module)?;
    let scope = state.store.scope_of(t.device.organisation_id).await?;
    let image = state.store.firmware_image(&scope, id).await?;
    if !image.model_ids.contains(&t.device.model_id) {
        return Err(ApiError::NotFound(format!(
            "no software module {id} for this target"
        )));
    }
    Ok(image)
}

async fn artifacts(
    State(state): State<Arc<AppState>>,
    Path((tenant, controller, module)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let t = target(&state, &headers, &tenant, &controller).await?;
    let image = target_image(&state, &t, &module).await?;
    Ok(Json(json!([artifact(&t, &image)])))
}

async fn artifact_file(
    State(state): State<Arc<AppState>>,
    Path((tenant, controller, module, file)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let t = target(&state, &headers, &tenant, &controller).await?;
    let image = target_image(&state, &t, &module).await?;
    if file.strip_suffix(".MD5SUM") == Some(image.file_name.as_str()) {
        return Ok((
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{}  {}\n", image.md5, image.file_name),
        )
            .into_response());
    }
    if file != image.file_name {
        return Err(ApiError::NotFound(format!(
            "software module {} has no artifact {file:?}",
            image.id
        )));
    }
    super::firmware::serve_image(&state, &headers, &image).await
}

use crate::dto::DdiTokenDto;
use crate::routes::{Caller, Id};

#[utoipa::path(
    post,
    path = "/api/v1/devices/{id}/ddi-token",
    tag = "firmware",
    params(("id" = i64, Path, description = "the object's id")),
    responses(
        (status = 201, description = "the device's new hawkBit DDI target token, shown once; an earlier one stops working", body = DdiTokenDto),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 403, response = crate::error::NotAllowed),
        (status = 404, response = crate::error::NotInScope)
    )
)]
pub(super) async fn issue_target_token(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
) -> Result<(StatusCode, Json<DdiTokenDto>), ApiError> {
    caller.require_admin()?;
    let token = ddi::issue_target_token(&state.store, &caller.session.scope, id).await?;
    let device = state.store.device(&caller.session.scope, id).await?;
    caller
        .audit(
            &state,
            "device.ddi_token",
            format!("device {id} ({})", device.mac),
            None,
            Some("new DDI target token issued".into()),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(DdiTokenDto {
            token,
            tenant: device.organisation_id.to_string(),
            controller_id: Some(device.mac),
        }),
    ))
}

#[utoipa::path(
    delete,
    path = "/api/v1/devices/{id}/ddi-token",
    tag = "firmware",
    params(("id" = i64, Path, description = "the object's id")),
    responses(
        (status = 204, description = "the device's DDI target token no longer works"),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 403, response = crate::error::NotAllowed),
        (status = 404, response = crate::error::NotInScope)
    )
)]
pub(super) async fn revoke_target_token(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    ddi::revoke_target_token(&state.store, &caller.session.scope, id).await?;
    caller
        .audit(
            &state,
            "device.ddi_token",
            format!("device {id}"),
            None,
            Some("DDI target token revoked".into()),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post,
    path = "/api/v1/organisations/{id}/ddi-gateway-token",
    tag = "firmware",
    params(("id" = i64, Path, description = "the object's id")),
    responses(
        (status = 201, description = "the organisation's new DDI gateway token, shown once: it speaks for every device of the organisation and those below it", body = DdiTokenDto),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 403, response = crate::error::NotAllowed),
        (status = 404, response = crate::error::NotInScope)
    )
)]
pub(super) async fn issue_gateway_token(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
) -> Result<(StatusCode, Json<DdiTokenDto>), ApiError> {
    caller.require_admin()?;
    let token = ddi::issue_gateway_token(&state.store, &caller.session.scope, id).await?;
    caller
        .audit(
            &state,
            "organisation.ddi_gateway_token",
            format!("organisation {id}"),
            None,
            Some("new DDI gateway token issued".into()),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(DdiTokenDto {
            token,
            tenant: id.to_string(),
            controller_id: None,
        }),
    ))
}

#[utoipa::path(
    delete,
    path = "/api/v1/organisations/{id}/ddi-gateway-token",
    tag = "firmware",
    params(("id" = i64, Path, description = "the object's id")),
    responses(
        (status = 204, description = "the organisation's DDI gateway token no longer works"),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 403, response = crate::error::NotAllowed),
        (status = 404, response = crate::error::NotInScope)
    )
)]
pub(super) async fn revoke_gateway_token(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    ddi::revoke_gateway_token(&state.store, &caller.session.scope, id).await?;
    caller
        .audit(
            &state,
            "organisation.ddi_gateway_token",
            format!("organisation {id}"),
            None,
            Some("DDI gateway token revoked".into()),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
