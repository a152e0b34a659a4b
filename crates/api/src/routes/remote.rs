//! Remote access: open a terminal, a tunnel or a reverse SSH tunnel on a
//! device, list and close sessions, and carry one over a WebSocket.

use device_protocol::session::SessionKind;
use platform::remote::{ClientMessage, OpenRequest, Opener, RemoteSessions};

use super::*;

fn remote_of(state: &AppState) -> Result<&Arc<RemoteSessions>, ApiError> {
    state
        .options
        .remote
        .as_ref()
        .ok_or_else(|| ApiError::NotFound("this server offers no remote access".into()))
}

/// A session id from the path: 32 hex digits, or it names nothing.
fn session_id(raw: &str) -> Result<&str, ApiError> {
    if device_protocol::session::valid_session_id(raw) {
        Ok(raw)
    } else {
        Err(ApiError::NotFound("no such remote session".into()))
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/devices/{id}/sessions",
    tag = "remote",
    params(("id" = i64, Path, description = "the object's id")),
    request_body = NewRemoteSessionDto,
    responses(
        (status = 201, description = "opening: the device is asked now; attach to `stream` to use it", body = RemoteSessionDto),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 403, response = crate::error::NotAllowed),
        (status = 404, response = crate::error::NotInScope),
        (status = 409, response = crate::error::StateConflict)
    )
)]
pub(super) async fn open_session(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
    body: JsonObject<NewRemoteSessionDto>,
) -> Result<(axum::http::StatusCode, Json<RemoteSessionDto>), ApiError> {
    let remote = remote_of(&state)?;
    if !remote.may_open(caller.session.role) {
        return Err(ApiError::Forbidden(format!(
            "the {} role may not open remote sessions",
            caller.session.role.as_str()
        )));
    }
    // Out of scope is 404 before any field is judged.
    state.store.device(&caller.session.scope, id).await?;
    let body = body.parse()?;
    let kind = match body.kind.as_str() {
        "terminal" => SessionKind::Terminal,
        "tunnel" => SessionKind::Tunnel,
        "reverse_ssh" => SessionKind::ReverseSsh,
        _ => {
            return Err(ApiError::field(
                "kind",
                "must be terminal, tunnel or reverse_ssh",
            ));
        }
    };
    let opener = Opener {
        username: caller.session.user.username.clone(),
        role: caller.session.role,
        scope: caller.session.scope.clone(),
        address: caller.address.clone(),
    };
    let info = remote
        .open(
            &opener,
            id,
            &OpenRequest {
                kind,
                cols: body.cols,
                rows: body.rows,
                port: body.port,
                window: body.window,
                ttl_secs: body.ttl_secs,
            },
        )
        .await?;
    Ok((axum::http::StatusCode::CREATED, Json(info.into())))
}

#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}/sessions",
    tag = "remote",
    params(("id" = i64, Path, description = "the object's id")),
    responses(
        (status = 200, description = "the device's open sessions", body = Vec<RemoteSessionDto>),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 404, response = crate::error::NotInScope)
    )
)]
pub(super) async fn list_sessions(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
) -> Result<Json<Vec<RemoteSessionDto>>, ApiError> {
    state.store.device(&caller.session.scope, id).await?;
    let remote = remote_of(&state)?;
    Ok(Json(
        remote
            .sessions_of(id)
            .into_iter()
            .map(RemoteSessionDto::from)
            .collect(),
    ))
}

#[utoipa::path(
    get,
    path = "/api/v1/remote-sessions/{session}",
    tag = "remote",
    params(("session" = String, Path, description = "the session's id")),
    responses(
        (status = 200, description = "the session, to its opener or an operator admin", body = RemoteSessionDto),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 404, response = crate::error::NotInScope)
    )
)]
pub(super) async fn get_session(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(session): Path<String>,
) -> Result<Json<RemoteSessionDto>, ApiError> {
    let remote = remote_of(&state)?;
    let s = &caller.session;
    Ok(Json(
        remote
            .session(session_id(&session)?, &s.user.username, s.role)?
            .into(),
    ))
}

#[utoipa::path(
    delete,
    path = "/api/v1/remote-sessions/{session}",
    tag = "remote",
    params(("session" = String, Path, description = "the session's id")),
    responses(
        (status = 204, description = "ended; the device and the client are told"),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 403, response = crate::error::NotAllowed),
        (status = 404, response = crate::error::NotInScope)
    )
)]
pub(super) async fn close_session(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(session): Path<String>,
) -> Result<axum::http::StatusCode, ApiError> {
    let remote = remote_of(&state)?;
    let s = &caller.session;
    remote.close(session_id(&session)?, &s.user.username, s.role)?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// How long one write to a client may wait before the client counts as gone.
const CLIENT_WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

#[utoipa::path(
    get,
    path = "/api/v1/remote-sessions/{session}/stream",
    tag = "remote",
    params(("session" = String, Path, description = "the session's id")),
    responses(
        (status = 101, description = "switching to the WebSocket protocol: binary session frames both ways, text events `opened` and `ended` from the platform"),
        (status = 400, description = "not a WebSocket request", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 404, response = crate::error::NotInScope),
        (status = 409, response = crate::error::StateConflict)
    )
)]
pub(super) async fn session_stream(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(session): Path<String>,
    upgrade: Result<
        axum::extract::ws::WebSocketUpgrade,
        axum::extract::ws::rejection::WebSocketUpgradeRejection,
    >,
) -> Result<Response, ApiError> {
    let remote = remote_of(&state)?.clone();
    let id = session_id(&session)?.to_owned();
    // Only the opener attaches; check before the upgrade so a refusal is a
    // plain HTTP answer.
    remote.session(&id, &caller.session.user.username, Role::Viewer)?;
    let upgrade = upgrade.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let (info, mut from_device) = remote.attach(&id, &caller.session.user.username)?;
    Ok(upgrade
        .max_message_size(device_protocol::session::MAX_FRAME + 1024)
        .on_upgrade(move |socket| async move {
            use axum::extract::ws::Message;
            use futures_util::{SinkExt, StreamExt};
            let (mut sink, mut stream) = socket.split();
            let hello = serde_json::json!({ "event": "attached", "session": info });
            if sink
                .send(Message::Text(hello.to_string().into()))
                .await
                .is_err()
            {
                remote.client_gone(&id);
                return;
            }
            // Device → client: the relay holds at most a window per channel,
            // so this queue is bounded by the protocol, not by us.
            let writer = async {
                while let Some(message) = from_device.recv().await {
                    let (message, last) = match message {
                        ClientMessage::Frame(bytes) => (Message::Binary(bytes), false),
                        ClientMessage::Event(event) => {
                            let last = event["event"] == "ended";
                            (Message::Text(event.to_string().into()), last)
                        }
                    };
                    match tokio::time::timeout(CLIENT_WRITE_TIMEOUT, sink.send(message)).await {
                        Ok(Ok(())) if !last => {}
                        Ok(Ok(())) => {
                            let _ = sink.send(Message::Close(None)).await;
                            return;
                        }
                        _ => return,
                    }
                }
            };
            let reader = async {
                while let Some(Ok(message)) = stream.next().await {
                    match message {
                        Message::Binary(bytes) if remote.from_client(&id, &bytes).is_err() => {
                            // The session is over; the writer delivers why
                            // and closes.
                            std::future::pending::<()>().await;
                        }
                        Message::Close(_) => return,
                        _ => {}
                    }
                }
            };
            tokio::select! {
                _ = writer => {}
                _ = reader => {}
            }
            remote.client_gone(&id);
        }))
}
