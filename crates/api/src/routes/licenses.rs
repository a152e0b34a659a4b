//! Service models and license keys.

use super::*;

#[utoipa::path(
    post,
    path = "/api/v1/license-keys/import",
    tag = "licenses",
    params(KeyImportQuery),
    request_body(description = "CSV with a `key` column (text/csv), or an ERP batch (application/json)", content((String = "text/csv"), (ErpKeyBatchDoc = "application/json"))),
    responses(
        (status = 200, description = "the import record, with each rejected line and reason", body = ImportRecordDto),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 403, response = crate::error::NotAllowed),
        (status = 404, description = "no such organisation in the caller's scope, or no such service model", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
pub(super) async fn import_license_keys(
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
    path = "/api/v1/service-models",
    tag = "licenses",
    responses(
        (status = 200, description = "service models (plans)", body = Vec<ServiceModelDto>),
        (status = 401, response = crate::error::Unauthenticated)
    )
)]
pub(super) async fn list_service_models(
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
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 403, response = crate::error::NotAllowed),
        (status = 409, response = crate::error::StateConflict)
    )
)]
pub(super) async fn create_service_model(
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
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated)
    )
)]
pub(super) async fn list_license_keys(
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
                service_model_id: q.service_model_id,
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
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 403, response = crate::error::NotAllowed),
        (status = 404, response = crate::error::NotInScope)
    )
)]
pub(super) async fn generate_license_keys(
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
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 403, response = crate::error::NotAllowed),
        (status = 404, response = crate::error::NotInScope),
        (status = 409, response = crate::error::StateConflict)
    )
)]
pub(super) async fn bind_license(
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
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 403, response = crate::error::NotAllowed),
        (status = 404, response = crate::error::NotInScope),
        (status = 409, response = crate::error::StateConflict)
    )
)]
pub(super) async fn unbind_license(
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
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 403, response = crate::error::NotAllowed),
        (status = 404, response = crate::error::NotInScope),
        (status = 409, response = crate::error::StateConflict)
    )
)]
pub(super) async fn revoke_license(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
) -> Result<Json<LicenseKeyDto>, ApiError> {
    caller.require_admin()?;
    let before = state.store.license_key(&caller.session.scope, id).await?;
    let key = platform::licensing::revoke(&state.store, &caller.session.scope, id).await?;
    // A device that holds the token is told to forget it.
    if let (true, Some(device), Some(tasks)) = (
        before.state == "deployed",
        before.device_id,
        state.options.tasks.as_ref(),
    ) {
        platform::tasks::create_job(
            &state.store,
            &caller.session.scope,
            &caller.session.user.username,
            &platform::tasks::JobRequest {
                kind: "license_revoke".into(),
                params: serde_json::json!({ "key": before.license_key }),
                device_ids: Some(vec![device]),
                description: Some(format!("revocation of {}", before.license_key)),
                max_retries: Some(3),
                expires_in_secs: Some(30 * 86_400),
                ..Default::default()
            },
        )
        .await?;
        tasks.wake();
    }
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
pub(super) async fn license_public_key(
    State(state): State<Arc<AppState>>,
) -> Result<Json<PublicKeyDto>, ApiError> {
    Ok(Json(PublicKeyDto {
        algorithm: "ed25519",
        public_key: platform::licensing::public_key(&state.store).await?,
    }))
}

#[utoipa::path(
    post,
    path = "/api/v1/license-keys/{id}/deploy",
    tag = "licenses",
    params(("id" = i64, Path, description = "the object's id")),
    responses(
        (status = 201, description = "a license_deploy task for the key's device: the key becomes deployed when the device verified and stored its token", body = ExecutionDto),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 403, response = crate::error::NotAllowed),
        (status = 404, response = crate::error::NotInScope),
        (status = 409, description = "the key is not bound to a device", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
pub(super) async fn deploy_license(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
) -> Result<(axum::http::StatusCode, Json<ExecutionDto>), ApiError> {
    if caller.session.role == Role::Viewer {
        return Err(ApiError::Forbidden(
            "the viewer role cannot run tasks".into(),
        ));
    }
    let Some(tasks) = state.options.tasks.as_ref() else {
        return Err(ApiError::NotFound("this server runs no tasks".into()));
    };
    let scope = &caller.session.scope;
    let key = state.store.license_key(scope, id).await?;
    let (Some(device), Some(token), "bound" | "deployed") =
        (key.device_id, key.token.clone(), key.state.as_str())
    else {
        return Err(ApiError::Conflict(format!(
            "the key is {}, not bound to a device",
            key.state
        )));
    };
    let job = platform::tasks::create_job(
        &state.store,
        scope,
        &caller.session.user.username,
        &platform::tasks::JobRequest {
            kind: "license_deploy".into(),
            params: serde_json::json!({ "token": token }),
            device_ids: Some(vec![device]),
            description: Some(format!("deployment of {}", key.license_key)),
            max_retries: Some(2),
            ..Default::default()
        },
    )
    .await?;
    tasks.wake();
    super::tasks::created_execution(&state, scope, job.id).await
}
