//! Firmware: the repository (streaming upload, list, delete, download),
//! the per-device download devices fetch with a token, campaigns and a
//! device's firmware history.

use std::collections::BTreeMap;
use std::io::SeekFrom;

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::*;

fn repository(state: &AppState) -> Result<&platform::firmware::FirmwareRepository, ApiError> {
    state
        .options
        .firmware
        .as_ref()
        .ok_or_else(|| ApiError::NotFound("this server keeps no firmware".into()))
}

/// What a request's `Range` and `If-Range` ask of a file of `size` bytes
/// (RFC 7233): all of it, one range, or a range past its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RangeAnswer {
    Whole,
    Part(u64, u64),
    Unsatisfiable,
}

/// A single byte range is served; a malformed `Range` is ignored and
/// several ranges get the whole file, both of which RFC 7233 allows
/// (§3.1). `If-Range` must name the current strong validator, or the
/// whole file is sent (§3.2).
pub(crate) fn range_answer(
    headers: &HeaderMap,
    size: u64,
    etag: &str,
    last_modified: &str,
) -> RangeAnswer {
    let Some(range) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return RangeAnswer::Whole;
    };
    if let Some(validator) = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        let validator = validator.trim();
        // A weak tag never matches (§3.2); a date must be the exact
        // Last-Modified.
        if validator != etag && validator != last_modified {
            return RangeAnswer::Whole;
        }
    }
    let Ok(parsed) = http_range_header::parse_range_header(range) else {
        return RangeAnswer::Whole;
    };
    match parsed.validate(size) {
        Ok(ranges) if ranges.len() == 1 => RangeAnswer::Part(*ranges[0].start(), *ranges[0].end()),
        Ok(_) => RangeAnswer::Whole,
        Err(_) => RangeAnswer::Unsatisfiable,
    }
}

/// Streams a file (or the range asked for) with the validators a resuming
/// client needs.
pub(crate) async fn serve_image(
    state: &AppState,
    headers: &HeaderMap,
    image: &store::FirmwareImage,
) -> Result<Response, ApiError> {
    let repository = repository(state)?;
    let path = repository.files.path(&image.sha256);
    let (path, sha256, modified_ms, file_name) =
        (&path, &image.sha256, image.created_at, &image.file_name);
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|_| ApiError::NotFound("the image's file is gone from this server".into()))?;
    let size = file
        .metadata()
        .await
        .map_err(|e| ApiError::Internal(format!("{}: {e}", path.display())))?
        .len();
    let etag = format!("\"{sha256}\"");
    let modified = std::time::UNIX_EPOCH
        + std::time::Duration::from_millis(u64::try_from(modified_ms).unwrap_or(0));
    let last_modified = httpdate::fmt_http_date(modified);
    let common = [
        (header::ACCEPT_RANGES, "bytes".to_owned()),
        (header::ETAG, etag.clone()),
        (header::LAST_MODIFIED, last_modified.clone()),
        (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
        (
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{file_name}\""),
        ),
    ];
    let (status, start, length, content_range) =
        match range_answer(headers, size, &etag, &last_modified) {
            RangeAnswer::Whole => (axum::http::StatusCode::OK, 0, size, None),
            RangeAnswer::Part(start, end) => (
                axum::http::StatusCode::PARTIAL_CONTENT,
                start,
                end - start + 1,
                Some(format!("bytes {start}-{end}/{size}")),
            ),
            RangeAnswer::Unsatisfiable => {
                let mut response = (
                    axum::http::StatusCode::RANGE_NOT_SATISFIABLE,
                    [(header::CONTENT_TYPE, "application/problem+json")],
                    serde_json::json!({
                        "type": "https://telemark.dev/problems/range-not-satisfiable",
                        "title": "Range not satisfiable",
                        "status": 416,
                        "detail": format!("the image has {size} bytes"),
                    })
                    .to_string(),
                )
                    .into_response();
                if let Ok(v) = header::HeaderValue::from_str(&format!("bytes */{size}")) {
                    response.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return Ok(response);
            }
        };
    let body = match repository.files.hot(sha256, size).await {
        // Views of the one copy in memory: no read, no buffer per download.
        Some(whole) => {
            let end = start + length;
            let chunks = (start..end).step_by(256 * 1024).map(move |from| {
                let to = (from + 256 * 1024).min(end);
                Ok::<_, std::convert::Infallible>(whole.slice(from as usize..to as usize))
            });
            axum::body::Body::from_stream(futures_util::stream::iter(chunks))
        }
        None => {
            file.seek(SeekFrom::Start(start))
                .await
                .map_err(|e| ApiError::Internal(format!("{}: {e}", path.display())))?;
            // 32 KiB reads: every download of a large image holds a chunk
            // in flight, so the chunk size is what a fleet costs in memory.
            axum::body::Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
                file.take(length),
                32 * 1024,
            ))
        }
    };
    let mut response = (status, common, body).into_response();
    let headers = response.headers_mut();
    if let Ok(v) = header::HeaderValue::from_str(&length.to_string()) {
        headers.insert(header::CONTENT_LENGTH, v);
    }
    if let Some(range) = content_range
        && let Ok(v) = header::HeaderValue::from_str(&range)
    {
        headers.insert(header::CONTENT_RANGE, v);
    }
    Ok(response)
}

#[utoipa::path(
    post,
    path = "/api/v1/firmware",
    tag = "firmware",
    params(FirmwareUploadQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the image, streamed"),
    responses(
        (status = 201, description = "kept, hashed and signed", body = FirmwareImageDto),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 403, response = crate::error::NotAllowed),
        (status = 409, description = "the model already has an image of this version", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 413, description = "larger than the server takes", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
/// Streams an image into the repository. Nothing is kept unless the
/// whole body arrived, its signature (if given) holds and the version is
/// new for each model.
pub(super) async fn upload_image(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    q: Result<Query<FirmwareUploadQuery>, QueryRejection>,
    body: axum::body::Body,
) -> Result<(axum::http::StatusCode, Json<FirmwareImageDto>), ApiError> {
    caller.require_admin()?;
    let repository = repository(&state)?;
    let q = query(q)?;
    let model_ids = q
        .model_ids
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse::<i64>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| ApiError::field("model_ids", "comma-separated model ids"))?;
    let meta = platform::firmware::ImageMeta {
        file_name: q
            .file_name
            .clone()
            .unwrap_or_else(|| format!("firmware-{}.bin", q.version.trim())),
        version: q.version,
        min_version: q.min_version.filter(|v| !v.trim().is_empty()),
        notes: q.notes.unwrap_or_default(),
        model_ids,
        signature: q.signature.filter(|s| !s.trim().is_empty()),
        organisation_id: q.organisation_id,
    };
    meta.check(&state.store, &caller.session.scope).await?;
    let mut writer = repository.files.writer(repository.max_image_bytes).await?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| platform::firmware::FirmwareError::Interrupted(e.to_string()))?;
        writer.write(&chunk).await?;
    }
    let written = writer.finish().await?;
    let image = platform::firmware::register_image(
        &state.store,
        &caller.session.scope,
        &caller.session.user.username,
        &meta,
        written,
        &repository.vendor_keys,
    )
    .await?;
    Ok((axum::http::StatusCode::CREATED, Json(image.into())))
}

#[utoipa::path(
    get,
    path = "/api/v1/firmware",
    tag = "firmware",
    params(FirmwareListQuery),
    responses(
        (status = 200, description = "images the caller's organisation may use, newest first", body = Vec<FirmwareImageDto>),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated)
    )
)]
pub(super) async fn list_images(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    q: Result<Query<FirmwareListQuery>, QueryRejection>,
) -> Result<Json<Vec<FirmwareImageDto>>, ApiError> {
    let q = query(q)?;
    let images = state
        .store
        .firmware_images(&caller.session.scope, q.model_id)
        .await?;
    Ok(Json(images.into_iter().map(Into::into).collect()))
}

#[utoipa::path(
    get,
    path = "/api/v1/firmware/{id}",
    tag = "firmware",
    params(("id" = i64, Path, description = "the object's id")),
    responses(
        (status = 200, description = "the image", body = FirmwareImageDto),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 404, response = crate::error::NotInScope)
    )
)]
pub(super) async fn get_image(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
) -> Result<Json<FirmwareImageDto>, ApiError> {
    let image = state
        .store
        .firmware_image(&caller.session.scope, id)
        .await?;
    Ok(Json(image.into()))
}

#[utoipa::path(
    delete,
    path = "/api/v1/firmware/{id}",
    tag = "firmware",
    params(("id" = i64, Path, description = "the object's id")),
    responses(
        (status = 200, description = "deleted with its file", body = FirmwareImageDto),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 403, response = crate::error::NotAllowed),
        (status = 404, response = crate::error::NotInScope),
        (status = 409, description = "a campaign names the image", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
pub(super) async fn delete_image(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
) -> Result<Json<FirmwareImageDto>, ApiError> {
    caller.require_admin()?;
    let repository = repository(&state)?;
    let image = platform::firmware::delete_image(
        &state.store,
        &repository.files,
        &caller.session.scope,
        &caller.session.user.username,
        id,
    )
    .await?;
    Ok(Json(image.into()))
}

#[utoipa::path(
    get,
    path = "/api/v1/firmware/{id}/file",
    tag = "firmware",
    params(("id" = i64, Path, description = "the object's id")),
    responses(
        (status = 200, description = "the image", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, description = "the range asked for", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 404, response = crate::error::NotInScope),
        (status = 416, description = "a range past the end", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
pub(super) async fn download_image(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let image = state
        .store
        .firmware_image(&caller.session.scope, id)
        .await?;
    serve_image(&state, &headers, &image).await
}

#[utoipa::path(
    get,
    path = "/api/v1/firmware-downloads/{token}",
    tag = "firmware",
    params(("token" = String, Path, description = "the download token a firmware_update request carried")),
    responses(
        (status = 200, description = "the image", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, description = "the range asked for (resume)", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 404, description = "no such download: an unknown, edited or expired token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 416, description = "a range past the end", body = crate::error::Problem, content_type = "application/problem+json")
    ),
    security(())
)]
/// Devices download with the token alone: it names one image and one
/// device and expires with the execution's deadline.
pub(super) async fn device_download(
    State(state): State<Arc<AppState>>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let repository = repository(&state)?;
    let (image, _device) = repository
        .tokens
        .check(&token, store::now_millis())
        .map_err(|e| ApiError::NotFound(format!("no such download: {e}")))?;
    let image = state.store.firmware_image_by_id(image).await?;
    serve_image(&state, &headers, &image).await
}

#[utoipa::path(
    post,
    path = "/api/v1/campaigns/preview",
    tag = "firmware",
    request_body = NewCampaignDto,
    responses(
        (status = 200, description = "the devices it would target, in waves, and those it would leave out", body = CampaignPreviewDto),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 404, response = crate::error::NotInScope)
    )
)]
pub(super) async fn preview_campaign(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    body: JsonObject<NewCampaignDto>,
) -> Result<Json<CampaignPreviewDto>, ApiError> {
    let request = body.parse()?.into();
    let preview =
        platform::campaigns::preview(&state.store, &caller.session.scope, &request).await?;
    Ok(Json(preview.into()))
}

#[utoipa::path(
    post,
    path = "/api/v1/campaigns",
    tag = "firmware",
    request_body = NewCampaignDto,
    responses(
        (status = 201, description = "made and running", body = CampaignDto),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 403, response = crate::error::NotAllowed),
        (status = 404, response = crate::error::NotInScope),
        (status = 409, description = "some devices are in another unfinished campaign", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
pub(super) async fn create_campaign(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    body: JsonObject<NewCampaignDto>,
) -> Result<(axum::http::StatusCode, Json<CampaignDto>), ApiError> {
    caller.require_admin()?;
    let request = body.parse()?.into();
    let campaign = platform::campaigns::create(
        &state.store,
        &caller.session.scope,
        &caller.session.user.username,
        &request,
    )
    .await?;
    Ok((
        axum::http::StatusCode::CREATED,
        Json(campaign_dto(&state, campaign).await?),
    ))
}

async fn campaign_dto(
    state: &AppState,
    c: store::FirmwareCampaign,
) -> Result<CampaignDto, ApiError> {
    let waves = state.store.campaign_waves(c.id).await?;
    let counts = state.store.campaign_counts(c.id).await?;
    let image = state.store.firmware_image_by_id(c.image_id).await?;
    let mut total = BTreeMap::new();
    for (_, s, n) in &counts {
        *total.entry(s.clone()).or_insert(0) += n;
    }
    let clock = |m: Option<i64>| m.map(|m| format!("{:02}:{:02}", m / 60, m % 60));
    Ok(CampaignDto {
        id: c.id,
        organisation_id: c.organisation_id,
        name: c.name,
        image_id: c.image_id,
        version: image.version,
        model_id: c.model_id,
        filter: serde_json::from_str(&c.filter).unwrap_or_default(),
        state: c.state,
        state_reason: c.state_reason,
        current_wave: c.current_wave,
        failure_threshold: c.failure_threshold,
        min_finished: c.min_finished,
        on_threshold: c.on_threshold,
        health_secs: c.health_secs,
        rollback_unhealthy: c.rollback_unhealthy,
        window_start: clock(c.window_start),
        window_end: clock(c.window_end),
        time_zone: c.time_zone,
        device_timeout_secs: c.device_timeout_secs,
        device_wait_secs: c.device_wait_secs,
        max_bytes_per_sec: c.max_bytes_per_sec,
        created_by: c.created_by,
        created_at: c.created_at,
        updated_at: c.updated_at,
        finished_at: c.finished_at,
        counts: total,
        waves: waves
            .into_iter()
            .map(|w| CampaignWaveDto {
                counts: counts
                    .iter()
                    .filter(|(n, _, _)| *n == w.number)
                    .map(|(_, s, n)| (s.clone(), *n))
                    .collect(),
                number: w.number,
                size: w.size,
                success_ratio: w.success_ratio,
                soak_secs: w.soak_secs,
                state: w.state,
                started_at: w.started_at,
                settled_at: w.settled_at,
                done_at: w.done_at,
            })
            .collect(),
    })
}

#[utoipa::path(
    get,
    path = "/api/v1/campaigns",
    tag = "firmware",
    responses(
        (status = 200, description = "campaigns of the caller's organisations, newest first", body = Vec<CampaignDto>),
        (status = 401, response = crate::error::Unauthenticated)
    )
)]
pub(super) async fn list_campaigns(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Vec<CampaignDto>>, ApiError> {
    let mut out = Vec::new();
    for c in state.store.campaigns(&caller.session.scope).await? {
        out.push(campaign_dto(&state, c).await?);
    }
    Ok(Json(out))
}

#[utoipa::path(
    get,
    path = "/api/v1/campaigns/{id}",
    tag = "firmware",
    params(("id" = i64, Path, description = "the object's id")),
    responses(
        (status = 200, description = "the campaign with its waves and counts per state", body = CampaignDto),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 404, response = crate::error::NotInScope)
    )
)]
pub(super) async fn get_campaign(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
) -> Result<Json<CampaignDto>, ApiError> {
    let c = state.store.campaign(&caller.session.scope, id).await?;
    Ok(Json(campaign_dto(&state, c).await?))
}

#[utoipa::path(
    get,
    path = "/api/v1/campaigns/{id}/progress",
    tag = "firmware",
    params(("id" = i64, Path, description = "the object's id")),
    responses(
        (status = 200, description = "devices in each final state over time, cumulative, in at most about 200 steps from the campaign's start", body = Vec<CampaignProgressDto>),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 404, response = crate::error::NotInScope)
    )
)]
pub(super) async fn campaign_progress(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
) -> Result<Json<Vec<CampaignProgressDto>>, ApiError> {
    let c = state.store.campaign(&caller.session.scope, id).await?;
    let end = c.finished_at.unwrap_or_else(store::now_millis);
    // Steps of at least ten seconds, at most about 200 of them.
    let step = ((end - c.created_at) / 200).max(10_000);
    let mut out: Vec<CampaignProgressDto> = Vec::new();
    let mut total = CampaignProgressDto {
        at: c.created_at,
        succeeded: 0,
        failed: 0,
        rolled_back: 0,
        skipped: 0,
    };
    for (bucket, device_state, n) in state.store.campaign_progress(id, step).await? {
        let at = (bucket + step).min(end.max(bucket));
        if out.last().is_some_and(|p| p.at != at) || out.is_empty() {
            out.push(CampaignProgressDto { at, ..total });
        }
        match device_state.as_str() {
            "succeeded" => total.succeeded += n,
            "failed" => total.failed += n,
            "rolled_back" => total.rolled_back += n,
            _ => total.skipped += n,
        }
        if let Some(last) = out.last_mut() {
            *last = CampaignProgressDto { at, ..total };
        }
    }
    Ok(Json(out))
}

#[utoipa::path(
    get,
    path = "/api/v1/campaigns/{id}/devices",
    tag = "firmware",
    params(("id" = i64, Path, description = "the object's id"), CampaignDeviceQuery),
    responses(
        (status = 200, description = "a page of the campaign's devices in id order, each with its stage", body = Vec<CampaignDeviceDto>),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 404, response = crate::error::NotInScope)
    )
)]
pub(super) async fn campaign_devices(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
    q: Result<Query<CampaignDeviceQuery>, QueryRejection>,
) -> Result<Json<Vec<CampaignDeviceDto>>, ApiError> {
    let q = query(q)?;
    if let Some(s) = &q.state
        && !store::CAMPAIGN_OPEN_STATES.contains(&s.as_str())
        && !store::CAMPAIGN_FINAL_STATES.contains(&s.as_str())
    {
        return Err(ApiError::field("state", format!("no device state {s:?}")));
    }
    let c = state.store.campaign(&caller.session.scope, id).await?;
    let devices = state
        .store
        .campaign_devices(
            c.id,
            q.wave,
            q.state.as_deref(),
            q.after,
            q.limit.unwrap_or(100),
        )
        .await?;
    Ok(Json(devices.into_iter().map(Into::into).collect()))
}

async fn control(
    state: &AppState,
    caller: &Caller,
    id: i64,
    action: &str,
) -> Result<Json<CampaignDto>, ApiError> {
    caller.require_admin()?;
    let c = platform::campaigns::control(
        &state.store,
        &caller.session.scope,
        &caller.session.user.username,
        id,
        action,
    )
    .await?;
    Ok(Json(campaign_dto(state, c).await?))
}

#[utoipa::path(
    post,
    path = "/api/v1/campaigns/{id}/pause",
    tag = "firmware",
    params(("id" = i64, Path, description = "the object's id")),
    responses(
        (status = 200, description = "paused: nothing more is sent; devices already updating finish", body = CampaignDto),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 403, response = crate::error::NotAllowed),
        (status = 404, response = crate::error::NotInScope),
        (status = 409, description = "the campaign is not running", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
pub(super) async fn pause_campaign(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
) -> Result<Json<CampaignDto>, ApiError> {
    control(&state, &caller, id, "pause").await
}

#[utoipa::path(
    post,
    path = "/api/v1/campaigns/{id}/resume",
    tag = "firmware",
    params(("id" = i64, Path, description = "the object's id")),
    responses(
        (status = 200, description = "running again", body = CampaignDto),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 403, response = crate::error::NotAllowed),
        (status = 404, response = crate::error::NotInScope),
        (status = 409, description = "the campaign is not paused", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
pub(super) async fn resume_campaign(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
) -> Result<Json<CampaignDto>, ApiError> {
    control(&state, &caller, id, "resume").await
}

#[utoipa::path(
    post,
    path = "/api/v1/campaigns/{id}/abort",
    tag = "firmware",
    params(("id" = i64, Path, description = "the object's id")),
    responses(
        (status = 200, description = "aborted: devices not yet notified are skipped", body = CampaignDto),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 403, response = crate::error::NotAllowed),
        (status = 404, response = crate::error::NotInScope),
        (status = 409, description = "the campaign is finished or aborted", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
pub(super) async fn abort_campaign(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
) -> Result<Json<CampaignDto>, ApiError> {
    control(&state, &caller, id, "abort").await
}

#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}/firmware",
    tag = "firmware",
    params(("id" = i64, Path, description = "the object's id")),
    responses(
        (status = 200, description = "the device's part in campaigns, newest first", body = Vec<FirmwareHistoryDto>),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 404, response = crate::error::NotInScope)
    )
)]
pub(super) async fn device_firmware(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
) -> Result<Json<Vec<FirmwareHistoryDto>>, ApiError> {
    let history = state
        .store
        .firmware_history(&caller.session.scope, id)
        .await?;
    Ok(Json(history.into_iter().map(Into::into).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(name.clone(), value.parse().expect("in a test"));
        }
        h
    }

    #[test]
    fn ranges_follow_rfc_7233() {
        let tag = "\"abc\"";
        let date = "Fri, 04 Dec 2026 10:00:00 GMT";
        let ask =
            |pairs: &[(header::HeaderName, &str)]| range_answer(&headers(pairs), 100, tag, date);
        assert_eq!(ask(&[]), RangeAnswer::Whole);
        assert_eq!(
            ask(&[(header::RANGE, "bytes=10-19")]),
            RangeAnswer::Part(10, 19)
        );
        assert_eq!(
            ask(&[(header::RANGE, "bytes=90-")]),
            RangeAnswer::Part(90, 99)
        );
        assert_eq!(
            ask(&[(header::RANGE, "bytes=-5")]),
            RangeAnswer::Part(95, 99)
        );
        assert_eq!(
            ask(&[(header::RANGE, "bytes=50-500")]),
            RangeAnswer::Part(50, 99)
        );
        assert_eq!(
            ask(&[(header::RANGE, "bytes=100-")]),
            RangeAnswer::Unsatisfiable
        );
        assert_eq!(ask(&[(header::RANGE, "lines=1-2")]), RangeAnswer::Whole);
        assert_eq!(ask(&[(header::RANGE, "bytes=0-1,5-6")]), RangeAnswer::Whole);
        // If-Range: the current tag or date resumes, anything else restarts.
        assert_eq!(
            ask(&[(header::RANGE, "bytes=10-"), (header::IF_RANGE, tag)]),
            RangeAnswer::Part(10, 99)
        );
        assert_eq!(
            ask(&[(header::RANGE, "bytes=10-"), (header::IF_RANGE, date)]),
            RangeAnswer::Part(10, 99)
        );
        assert_eq!(
            ask(&[(header::RANGE, "bytes=10-"), (header::IF_RANGE, "\"old\"")]),
            RangeAnswer::Whole
        );
        assert_eq!(
            ask(&[
                (header::RANGE, "bytes=10-"),
                (header::IF_RANGE, "W/\"abc\"")
            ]),
            RangeAnswer::Whole
        );
    }
}
