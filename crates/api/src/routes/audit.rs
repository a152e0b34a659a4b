//! Statistics and the system log.

use super::*;

#[utoipa::path(
    get,
    path = "/api/v1/statistics",
    tag = "statistics",
    responses(
        (status = 200, description = "the dashboard counters with their change since the same day last week", body = StatisticsDto),
        (status = 401, response = crate::error::Unauthenticated)
    )
)]
pub(super) async fn statistics(
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
    get,
    path = "/api/v1/statistics/history",
    tag = "statistics",
    params(StatisticsHistoryQuery),
    responses(
        (status = 200, description = "the daily snapshots of the counters, oldest first: devices online and offline over time", body = Vec<DailyCountersDto>),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated)
    )
)]
pub(super) async fn statistics_history(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    q: Result<Query<StatisticsHistoryQuery>, QueryRejection>,
) -> Result<Json<Vec<DailyCountersDto>>, ApiError> {
    let q = query(q)?;
    let days = i64::from(q.days.unwrap_or(30));
    if !(1..=366).contains(&days) {
        return Err(ApiError::field("days", "must be between 1 and 366"));
    }
    let rows = state
        .store
        .daily_counters_since(&caller.session.scope, store::today() - days + 1)
        .await?;
    Ok(Json(
        rows.into_iter()
            .map(|(day, c)| DailyCountersDto {
                day: day * 86_400_000,
                devices: c.devices,
                online_devices: c.online_devices,
                users: c.users,
                system_integrators: c.integrators,
                business_customers: c.customers,
                license_keys: c.license_keys,
            })
            .collect(),
    ))
}

pub(super) async fn audit_entries(
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
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 403, response = crate::error::NotAllowed)
    )
)]
pub(super) async fn audit_log(
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
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 403, response = crate::error::NotAllowed)
    )
)]
/// The log as CSV, for a spreadsheet or an auditor.
pub(super) async fn audit_csv(
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
    path = "/api/v1/health",
    tag = "statistics",
    responses(
        (status = 200, description = "every background task up and steady", body = HealthDto),
        (status = 503, description = "a task is down or failed in the last five minutes", body = HealthDto)
    ),
    security(())
)]
/// For load balancers and monitoring: open to all, with why a task failed
/// only for the operator's admins (it may name internals).
pub(super) async fn health(
    State(state): State<Arc<AppState>>,
    caller: Option<Caller>,
) -> Result<Response, ApiError> {
    let operator = caller.is_some_and(|c| c.session.role == Role::OperatorAdmin);
    let tasks = state
        .options
        .supervisor
        .as_ref()
        .map(|s| s.status())
        .unwrap_or_default();
    let recent = store::now_millis() - 5 * 60 * 1000;
    let degraded = tasks
        .iter()
        .any(|t| !t.running || t.last_failure.as_ref().is_some_and(|(at, _)| *at > recent));
    let dto = HealthDto {
        status: if degraded { "degraded" } else { "ok" },
        tasks: tasks
            .into_iter()
            .map(|t| TaskHealthDto {
                name: t.name.to_owned(),
                running: t.running,
                restarts: t.restarts,
                last_failure_at: t.last_failure.as_ref().map(|(at, _)| *at),
                last_failure: t.last_failure.filter(|_| operator).map(|(_, why)| why),
            })
            .collect(),
    };
    let status = if degraded {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    } else {
        axum::http::StatusCode::OK
    };
    Ok((status, Json(dto)).into_response())
}
