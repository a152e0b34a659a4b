//! Black-box bundles: the one-time upload a device makes for a `black_box`
//! task, a device's list, and the download.

use std::path::PathBuf;

use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::*;

/// The largest bundle a device may upload.
pub(crate) const MAX_BUNDLE: usize = 32 << 20;

fn bundle_path(state: &AppState, id: i64) -> Result<PathBuf, ApiError> {
    state
        .options
        .data_dir
        .as_ref()
        .map(|dir| dir.join("black-box").join(format!("{id}.json")))
        .ok_or_else(|| ApiError::NotFound("this server keeps no black-box bundles".into()))
}

#[utoipa::path(
    put,
    path = "/api/v1/black-box/{token}",
    tag = "tasks",
    params(("token" = String, Path, description = "the one-time token of the upload URL a black_box request carried")),
    request_body(content = Vec<u8>, content_type = "application/json", description = "the bundle, at most 32 MiB"),
    responses(
        (status = 201, description = "kept; the token is spent", body = BundleDto),
        (status = 404, description = "no such upload: unknown, spent or expired token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 413, description = "larger than 32 MiB", body = crate::error::Problem, content_type = "application/problem+json")
    ),
    security(())
)]
/// Devices upload with the token alone: it is valid for one execution,
/// until its deadline, once.
pub(super) async fn upload_bundle(
    State(state): State<Arc<AppState>>,
    Path(token): Path<String>,
    body: axum::body::Body,
) -> Result<(axum::http::StatusCode, Json<BundleDto>), ApiError> {
    let gone = || ApiError::NotFound("no such upload (unknown, spent or expired)".into());
    if token.is_empty()
        || token.len() > 128
        || !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(gone());
    }
    let token_hash = platform::accounts::sha256_hex(token.as_bytes());
    let slot = state
        .store
        .bundle_slot(&token_hash)
        .await?
        .ok_or_else(gone)?;
    let path = bundle_path(&state, slot.id)?;
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| ApiError::Internal(format!("{}: {e}", dir.display())))?;
    }
    let partial = path.with_extension("part");
    let mut file = tokio::fs::File::create(&partial)
        .await
        .map_err(|e| ApiError::Internal(format!("{}: {e}", partial.display())))?;
    let mut hasher = Sha256::new();
    let mut size = 0usize;
    let mut stream = body.into_data_stream();
    let written: Result<(), ApiError> = async {
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| ApiError::bad_request(format!("the upload broke off: {e}")))?;
            size += chunk.len();
            if size > MAX_BUNDLE {
                return Err(ApiError::TooLarge(format!(
                    "a bundle is at most {} MiB",
                    MAX_BUNDLE >> 20
                )));
            }
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| ApiError::Internal(format!("{}: {e}", partial.display())))?;
        }
        file.sync_all()
            .await
            .map_err(|e| ApiError::Internal(format!("{}: {e}", partial.display())))
    }
    .await;
    if let Err(e) = written {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(e);
    }
    let sha256: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    // Spent before the file takes its name: one upload per token.
    if !state
        .store
        .receive_bundle(slot.id, size as i64, &sha256)
        .await?
    {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(gone());
    }
    tokio::fs::rename(&partial, &path)
        .await
        .map_err(|e| ApiError::Internal(format!("{}: {e}", path.display())))?;
    let mut bundle = slot;
    bundle.size = Some(size as i64);
    bundle.sha256 = Some(sha256);
    bundle.state = "received".into();
    bundle.received_at = Some(store::now_millis());
    Ok((axum::http::StatusCode::CREATED, Json(bundle.into())))
}

#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}/black-box",
    tag = "tasks",
    params(("id" = i64, Path, description = "the object's id")),
    responses(
        (status = 200, description = "the bundles the device uploaded, newest first", body = Vec<BundleDto>),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 404, response = crate::error::NotInScope)
    )
)]
pub(super) async fn list_bundles(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
) -> Result<Json<Vec<BundleDto>>, ApiError> {
    let bundles = state.store.bundles(&caller.session.scope, id).await?;
    Ok(Json(bundles.into_iter().map(Into::into).collect()))
}

#[utoipa::path(
    get,
    path = "/api/v1/black-box-bundles/{id}",
    tag = "tasks",
    params(("id" = i64, Path, description = "the object's id")),
    responses(
        (status = 200, description = "the bundle as the device uploaded it", content_type = "application/json", body = Object),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 404, response = crate::error::NotInScope)
    )
)]
pub(super) async fn download_bundle(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
) -> Result<Response, ApiError> {
    let bundle = state.store.bundle(&caller.session.scope, id).await?;
    let path = bundle_path(&state, bundle.id)?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|_| ApiError::NotFound(format!("the file of bundle {id} is gone")))?;
    let length = file
        .metadata()
        .await
        .map_err(|e| ApiError::Internal(format!("{}: {e}", path.display())))?
        .len();
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok((
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (header::CONTENT_LENGTH, length.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!(
                    "attachment; filename=\"black-box-{}-{}.json\"",
                    bundle.device_id, bundle.id
                ),
            ),
        ],
        body,
    )
        .into_response())
}
