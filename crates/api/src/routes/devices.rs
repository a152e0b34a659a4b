//! Device models, the device registry, imports and device credentials.

use super::*;

#[utoipa::path(
    get,
    path = "/api/v1/device-models",
    tag = "devices",
    responses(
        (status = 200, description = "device models", body = Vec<DeviceModelDto>),
        (status = 401, response = crate::error::Unauthenticated)
    )
)]
pub(super) async fn list_models(
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
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 403, response = crate::error::NotAllowed),
        (status = 409, response = crate::error::StateConflict)
    )
)]
pub(super) async fn create_model(
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
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 404, description = "the organisation filter names no organisation in the caller's scope", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
pub(super) async fn list_devices(
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
                firmware_version: q.firmware_version,
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

pub(super) fn device_sort(name: &str) -> Result<DeviceSort, ApiError> {
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
pub(super) fn encode_cursor(cursor: &DeviceCursor) -> String {
    let text = match cursor {
        DeviceCursor::Id(id) => format!("i:{id}"),
        DeviceCursor::Number(value, id) => format!("n:{id}:{value}"),
        DeviceCursor::Text(value, id) => format!("t:{id}:{value}"),
    };
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn decode_cursor(hex: &str, sort: DeviceSort) -> Result<DeviceCursor, ApiError> {
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
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 404, response = crate::error::NotInScope)
    )
)]
pub(super) async fn get_device(
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
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 403, response = crate::error::NotAllowed)
    )
)]
pub(super) async fn import_devices(
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

#[utoipa::path(
    get,
    path = "/api/v1/imports",
    tag = "devices",
    params(ImportListQuery),
    responses(
        (status = 200, description = "ERP import records, newest first (rejections with each record)", body = Vec<ImportRecordDto>),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated)
    )
)]
pub(super) async fn list_imports(
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
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 404, response = crate::error::NotInScope)
    )
)]
pub(super) async fn get_import(
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
    post,
    path = "/api/v1/devices/{id}/credentials",
    tag = "devices",
    params(("id" = i64, Path, description = "the object's id")),
    responses(
        (status = 201, description = "new MQTT credentials, shown once", body = DeviceCredentialsDto),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 403, response = crate::error::NotAllowed),
        (status = 404, response = crate::error::NotInScope)
    )
)]
pub(super) async fn issue_credentials(
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
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 403, response = crate::error::NotAllowed),
        (status = 404, response = crate::error::NotInScope),
        (status = 409, description = "another device already has this certificate", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
pub(super) async fn issue_certificate(
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
        (status = 401, response = crate::error::Unauthenticated)
    )
)]
pub(super) async fn device_ca(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
) -> Result<Json<DeviceCaDto>, ApiError> {
    Ok(Json(DeviceCaDto {
        certificate_pem: platform::device_certificates::device_ca_pem(&state.store).await?,
    }))
}

#[utoipa::path(
    post,
    path = "/api/v1/devices/labels",
    tag = "devices",
    request_body = RelabelDto,
    responses(
        (status = 200, description = "labels added and removed, all devices or none", body = RelabelResultDto),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 403, response = crate::error::NotAllowed),
        (status = 404, response = crate::error::NotInScope)
    )
)]
pub(super) async fn relabel_devices(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    body: JsonObject<RelabelDto>,
) -> Result<Json<RelabelResultDto>, ApiError> {
    caller.require_admin()?;
    let body = body.parse()?;
    if body.device_ids.is_empty() || body.device_ids.len() > 1000 {
        return Err(ApiError::field("device_ids", "name 1 to 1,000 devices"));
    }
    if body.add.is_empty() && body.remove.is_empty() {
        return Err(ApiError::field("add", "name a label to add or to remove"));
    }
    for (field, labels) in [("add", &body.add), ("remove", &body.remove)] {
        if let Some(bad) = labels
            .iter()
            .find(|l| !platform::identifiers::is_valid_label(l))
        {
            return Err(ApiError::field(
                field,
                format!(
                    "{bad:?} is not a label: 1 to 64 characters, no comma, no spaces at either end"
                ),
            ));
        }
    }
    let changed = state
        .store
        .relabel_devices(
            &caller.session.scope,
            &body.device_ids,
            &body.add,
            &body.remove,
        )
        .await?;
    caller
        .audit(
            &state,
            "device.labels",
            format!("{} devices", body.device_ids.len()),
            None,
            Some(format!(
                "added {:?}, removed {:?}; {changed} changed",
                body.add, body.remove
            )),
        )
        .await?;
    Ok(Json(RelabelResultDto { changed }))
}
