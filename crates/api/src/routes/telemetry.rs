//! A device's black box: latest values, series, logs, faults, presence, the live stream.

use super::*;

#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}/metrics",
    tag = "telemetry",
    params(("id" = i64, Path, description = "the object's id")),
    responses(
        (status = 200, description = "the last reading of each of the device's metrics", body = Vec<LatestReadingDto>),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 404, response = crate::error::NotInScope)
    )
)]
pub(super) async fn device_latest(
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
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 404, response = crate::error::NotInScope)
    )
)]
pub(super) async fn device_series(
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
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 404, response = crate::error::NotInScope)
    )
)]
pub(super) async fn device_logs(
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
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 404, response = crate::error::NotInScope)
    )
)]
pub(super) async fn device_faults(
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
    path = "/api/v1/devices/{id}/live",
    tag = "telemetry",
    description = "A WebSocket (send `Upgrade: websocket`): one text message per reading as the platform ingests it, `{\"metric\", \"ts\", \"value\"}`.",
    params(("id" = i64, Path, description = "the object's id")),
    responses(
        (status = 101, description = "switching to the WebSocket protocol"),
        (status = 400, description = "not a WebSocket request, or a bad id", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 404, response = crate::error::NotInScope)
    )
)]
pub(super) async fn device_live(
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
    // A slow viewer skips readings rather than slowing the ingest.
    Ok(live_events(upgrade, ingest.subscribe_live(), move |r| {
        (r.device_id == id).then(|| {
            serde_json::json!({"metric": r.metric, "ts": r.ts, "value": r.value}).to_string()
        })
    }))
}

#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}/presence",
    tag = "telemetry",
    params(("id" = i64, Path, description = "the object's id"), PresenceQuery),
    responses(
        (status = 200, description = "the device's connects and disconnects, newest first", body = Vec<PresenceChangeDto>),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 404, response = crate::error::NotInScope)
    )
)]
pub(super) async fn device_presence(
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

#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}/radio",
    tag = "telemetry",
    params(("id" = i64, Path, description = "the object's id"), PresenceQuery),
    responses(
        (status = 200, description = "the radio the device is on (technology, band, carrier aggregation, operator, cell) and its changes, newest first", body = RadioDto),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 404, response = crate::error::NotInScope)
    )
)]
pub(super) async fn device_radio(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
    q: Result<Query<PresenceQuery>, QueryRejection>,
) -> Result<Json<RadioDto>, ApiError> {
    let q = query(q)?;
    let scope = &caller.session.scope;
    let radio = state.store.radio_state(scope, id).await?;
    let changes = state
        .store
        .radio_changes(scope, id, q.before_id, page_limit(q.limit, 50, 1000)?)
        .await?;
    Ok(Json(RadioDto {
        state: radio.map(|r| RadioStateDto {
            technology: r.technology,
            band: r.band,
            carrier_aggregation: serde_json::from_str(&r.carrier_aggregation)
                .unwrap_or(serde_json::Value::Array(Vec::new())),
            operator: r.operator,
            cell_id: r.cell_id,
            smcc: r.smcc,
            smnc: r.smnc,
            source: r.source,
            updated_at: r.updated_at,
        }),
        changes: changes
            .into_iter()
            .map(|c| RadioChangeDto {
                id: c.id,
                at: c.at,
                kind: c.kind,
                before: c.before_value,
                after: c.after_value,
            })
            .collect(),
    }))
}
