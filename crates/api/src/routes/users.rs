//! Login, sessions, API tokens, users and organisations.

use super::*;

/// `; Secure` when the console is served over HTTPS: the browser then never
/// sends the session over plain HTTP.
fn secure_attribute(state: &AppState) -> &'static str {
    if state.options.secure_cookie {
        "; Secure"
    } else {
        ""
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/session",
    tag = "session",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "logged in; sets the session cookie", body = SessionDto),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 429, description = "too many failed logins; see Retry-After", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "too many logins at once; see Retry-After", body = crate::error::Problem, content_type = "application/problem+json")
    ),
    security(())
)]
pub(super) async fn login(
    State(state): State<Arc<AppState>>,
    Source(source): Source,
    body: JsonObject<LoginRequest>,
) -> Result<Response, ApiError> {
    use platform::login_guard::LoginRefusal;
    let request = body.parse()?;
    let session = match state
        .options
        .logins
        .verify(&state.store, &request.username, &request.password, source)
        .await
    {
        Ok(session) => session,
        Err(LoginRefusal::BadCredentials) => return Err(ApiError::Unauthorized),
        Err(LoginRefusal::Throttled(wait)) => {
            return Err(ApiError::TooManyAttempts(wait.as_secs().max(1)));
        }
        Err(LoginRefusal::Busy) => return Err(ApiError::Busy),
        Err(LoginRefusal::Other(e)) => return Err(e.into()),
    };
    let (session, token) = accounts::open_session(&state.store, session).await?;
    let cookie = format!(
        "{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{}",
        accounts::SESSION_HOURS * 3600,
        secure_attribute(&state)
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
        (status = 401, response = crate::error::Unauthenticated)
    )
)]
pub(super) async fn me(caller: Caller) -> Json<SessionDto> {
    Json(SessionDto {
        user_id: caller.session.user.id,
        username: caller.session.user.username.clone(),
        role: caller.session.role.as_str().to_owned(),
        organisation_id: caller.session.user.organisation_id,
        // The console reloads without its login answer; this GET is
        // same-origin only (no CORS), so echoing the token here is safe.
        csrf_token: Some(csrf_for(&caller.token)),
        token: None,
    })
}

#[utoipa::path(
    delete,
    path = "/api/v1/session",
    tag = "session",
    responses(
        (status = 204, description = "logged out; the cookie is cleared"),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 403, response = crate::error::NotAllowed)
    )
)]
pub(super) async fn logout(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Response, ApiError> {
    accounts::logout(&state.store, &caller.token).await?;
    let expired = format!(
        "{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{}",
        secure_attribute(&state)
    );
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
        (status = 401, response = crate::error::Unauthenticated)
    )
)]
pub(super) async fn list_organisations(
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
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 403, response = crate::error::NotAllowed),
        (status = 404, response = crate::error::NotInScope),
        (status = 409, response = crate::error::StateConflict)
    )
)]
pub(super) async fn create_organisation(
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
    path = "/api/v1/users",
    tag = "users",
    responses(
        (status = 200, description = "users of the caller's organisations", body = Vec<UserDto>),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 403, response = crate::error::NotAllowed)
    )
)]
pub(super) async fn list_users(
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
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 403, response = crate::error::NotAllowed),
        (status = 404, response = crate::error::NotInScope),
        (status = 409, response = crate::error::StateConflict)
    )
)]
pub(super) async fn create_user(
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
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 403, response = crate::error::NotAllowed),
        (status = 404, response = crate::error::NotInScope)
    )
)]
pub(super) async fn set_user_state(
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
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 403, response = crate::error::NotAllowed)
    )
)]
pub(super) async fn change_password(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    body: JsonObject<PasswordChangeDto>,
) -> Result<axum::http::StatusCode, ApiError> {
    let request = body.parse()?;
    match accounts::change_password(
        &state.store,
        &caller.session,
        &caller.token,
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
    path = "/api/v1/tokens",
    tag = "session",
    responses(
        (status = 200, description = "the caller's API tokens, without their secrets", body = Vec<ApiTokenDto>),
        (status = 401, response = crate::error::Unauthenticated)
    )
)]
pub(super) async fn list_api_tokens(
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
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 403, response = crate::error::NotAllowed)
    )
)]
pub(super) async fn create_api_token(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    body: JsonObject<NewApiTokenDto>,
) -> Result<(axum::http::StatusCode, Json<ApiTokenDto>), ApiError> {
    let request = body.parse()?;
    let (row, token) = accounts::create_api_token(
        &state.store,
        &caller.session,
        &request.name,
        request.expires_in_days,
    )
    .await?;
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
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 403, response = crate::error::NotAllowed),
        (status = 404, response = crate::error::NotInScope)
    )
)]
pub(super) async fn revoke_api_token(
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
