//! Remote tasks: one device's tasks, bulk jobs, executions, cancel, retry,
//! and a job's progress live.

use platform::tasks::{DeviceFilter, JobRequest};

use super::*;

/// Engineers and admins run tasks; viewers read them.
fn require_runner(caller: &Caller) -> Result<(), ApiError> {
    if caller.session.role == Role::Viewer {
        return Err(ApiError::Forbidden(
            "the viewer role cannot run tasks".into(),
        ));
    }
    Ok(())
}

fn tasks_of(state: &AppState) -> Result<&Arc<platform::tasks::TaskService>, ApiError> {
    state
        .options
        .tasks
        .as_ref()
        .ok_or_else(|| ApiError::NotFound("this server runs no tasks".into()))
}

fn check_state(state: &Option<String>, allowed: &[&str]) -> Result<(), ApiError> {
    match state {
        Some(s) if !allowed.contains(&s.as_str()) => Err(ApiError::field(
            "state",
            format!("must be one of {}", allowed.join(", ")),
        )),
        _ => Ok(()),
    }
}

async fn job_dto(state: &AppState, job: store::TaskJob) -> Result<JobDto, ApiError> {
    let mut counts = state.store.execution_counts(&[job.id]).await?;
    let counts = counts.remove(&job.id);
    Ok(JobDto::new(job, counts))
}

#[utoipa::path(
    post,
    path = "/api/v1/devices/{id}/tasks",
    tag = "tasks",
    params(("id" = i64, Path, description = "the object's id")),
    request_body = NewTaskDto,
    responses(
        (status = 201, description = "queued: sent now if the device is online, else when it connects", body = ExecutionDto),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 403, response = crate::error::NotAllowed),
        (status = 404, response = crate::error::NotInScope)
    )
)]
pub(super) async fn create_device_task(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
    body: JsonObject<NewTaskDto>,
) -> Result<(axum::http::StatusCode, Json<ExecutionDto>), ApiError> {
    require_runner(&caller)?;
    let tasks = tasks_of(&state)?;
    let t = body.parse()?;
    let scope = &caller.session.scope;
    state.store.device(scope, id).await?;
    let job = platform::tasks::create_job(
        &state.store,
        scope,
        &caller.session.user.username,
        &JobRequest {
            kind: t.kind,
            params: t.params,
            device_ids: Some(vec![id]),
            timeout_secs: t.timeout_secs,
            expires_in_secs: t.expires_in_secs,
            max_retries: t.max_retries,
            retry_backoff_secs: t.retry_backoff_secs,
            ..JobRequest::default()
        },
    )
    .await?;
    tasks.wake();
    created_execution(&state, scope, job.id).await
}

/// The one execution of a job just made for one device, as 201.
pub(super) async fn created_execution(
    state: &AppState,
    scope: &store::Scope,
    job_id: i64,
) -> Result<(axum::http::StatusCode, Json<ExecutionDto>), ApiError> {
    let execution = state
        .store
        .task_executions(
            scope,
            &store::ExecutionQuery {
                job_id: Some(job_id),
                limit: 1,
                ..Default::default()
            },
        )
        .await?
        .pop()
        .ok_or_else(|| ApiError::Internal("a new job without its execution".into()))?;
    Ok((axum::http::StatusCode::CREATED, Json(execution.into())))
}

#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}/tasks",
    tag = "tasks",
    params(("id" = i64, Path, description = "the object's id"), ExecutionListQuery),
    responses(
        (status = 200, description = "the device's task executions, newest first", body = Vec<ExecutionDto>),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 404, response = crate::error::NotInScope)
    )
)]
pub(super) async fn list_device_tasks(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
    q: Result<Query<ExecutionListQuery>, QueryRejection>,
) -> Result<Json<Vec<ExecutionDto>>, ApiError> {
    state.store.device(&caller.session.scope, id).await?;
    let of_device = store::ExecutionQuery {
        device_id: Some(id),
        ..Default::default()
    };
    executions_page(&state, &caller, query(q)?, of_device, 50).await
}

/// A page of executions (of a device or a job) with the list's filters.
async fn executions_page(
    state: &AppState,
    caller: &Caller,
    q: ExecutionListQuery,
    of: store::ExecutionQuery,
    default_limit: u32,
) -> Result<Json<Vec<ExecutionDto>>, ApiError> {
    check_state(&q.state, &EXECUTION_STATES)?;
    let executions = state
        .store
        .task_executions(
            &caller.session.scope,
            &store::ExecutionQuery {
                state: q.state,
                before_id: q.before_id,
                limit: page_limit(q.limit, default_limit, 1000)?,
                ..of
            },
        )
        .await?;
    Ok(Json(executions.into_iter().map(Into::into).collect()))
}

const EXECUTION_STATES: [&str; 8] = [
    "queued",
    "sent",
    "in_progress",
    "succeeded",
    "failed",
    "rejected",
    "timed_out",
    "cancelled",
];
const JOB_STATES: [&str; 4] = ["running", "finished", "cancelled", "aborted"];

#[utoipa::path(
    post,
    path = "/api/v1/jobs",
    tag = "tasks",
    request_body = NewJobDto,
    responses(
        (status = 201, description = "the job, its executions queued", body = JobDto),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 403, response = crate::error::NotAllowed),
        (status = 404, description = "a device or organisation outside the caller's scope", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
pub(super) async fn create_job(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    body: JsonObject<NewJobDto>,
) -> Result<(axum::http::StatusCode, Json<JobDto>), ApiError> {
    require_runner(&caller)?;
    let tasks = tasks_of(&state)?;
    let j = body.parse()?;
    let job = platform::tasks::create_job(
        &state.store,
        &caller.session.scope,
        &caller.session.user.username,
        &JobRequest {
            kind: j.kind,
            params: j.params,
            device_ids: j.device_ids,
            filter: j.filter.map(|f| DeviceFilter {
                model_id: f.model_id,
                organisation_id: f.organisation_id,
                label: f.label,
                firmware_version: f.firmware_version,
                online: f.online,
            }),
            description: j.description,
            timeout_secs: j.timeout_secs,
            expires_in_secs: j.expires_in_secs,
            max_retries: j.max_retries,
            retry_backoff_secs: j.retry_backoff_secs,
            rollout_per_minute: j.rollout_per_minute,
            abort_failure_ratio: j.abort_failure_ratio,
            abort_min_finished: j.abort_min_finished,
        },
    )
    .await?;
    tasks.wake();
    let dto = job_dto(&state, job).await?;
    Ok((axum::http::StatusCode::CREATED, Json(dto)))
}

#[utoipa::path(
    get,
    path = "/api/v1/jobs",
    tag = "tasks",
    params(JobListQuery),
    responses(
        (status = 200, description = "jobs of the caller's organisations, newest first, with counts per state", body = Vec<JobDto>),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated)
    )
)]
pub(super) async fn list_jobs(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    q: Result<Query<JobListQuery>, QueryRejection>,
) -> Result<Json<Vec<JobDto>>, ApiError> {
    let q = query(q)?;
    check_state(&q.state, &JOB_STATES)?;
    let jobs = state
        .store
        .task_jobs(
            &caller.session.scope,
            &store::JobQuery {
                state: q.state,
                before_id: q.before_id,
                limit: page_limit(q.limit, 50, 500)?,
            },
        )
        .await?;
    let ids: Vec<i64> = jobs.iter().map(|j| j.id).collect();
    let mut counts = state.store.execution_counts(&ids).await?;
    Ok(Json(
        jobs.into_iter()
            .map(|j| {
                let c = counts.remove(&j.id);
                JobDto::new(j, c)
            })
            .collect(),
    ))
}

#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}",
    tag = "tasks",
    params(("id" = i64, Path, description = "the object's id")),
    responses(
        (status = 200, description = "the job with its counts per state", body = JobDto),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 404, response = crate::error::NotInScope)
    )
)]
pub(super) async fn get_job(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
) -> Result<Json<JobDto>, ApiError> {
    let job = state.store.task_job(&caller.session.scope, id).await?;
    Ok(Json(job_dto(&state, job).await?))
}

#[utoipa::path(
    post,
    path = "/api/v1/jobs/{id}/cancel",
    tag = "tasks",
    params(("id" = i64, Path, description = "the object's id")),
    responses(
        (status = 200, description = "cancelled: nothing more is sent, open executions are cancelled", body = JobDto),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 403, response = crate::error::NotAllowed),
        (status = 404, response = crate::error::NotInScope),
        (status = 409, description = "the job is no longer running", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
pub(super) async fn cancel_job(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
) -> Result<Json<JobDto>, ApiError> {
    require_runner(&caller)?;
    let job = platform::tasks::cancel_job(
        &state.store,
        &caller.session.scope,
        &caller.session.user.username,
        id,
    )
    .await?;
    Ok(Json(job_dto(&state, job).await?))
}

#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}/executions",
    tag = "tasks",
    params(("id" = i64, Path, description = "the object's id"), ExecutionListQuery),
    responses(
        (status = 200, description = "the job's executions on devices in the caller's scope, newest first", body = Vec<ExecutionDto>),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 404, response = crate::error::NotInScope)
    )
)]
pub(super) async fn list_job_executions(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
    q: Result<Query<ExecutionListQuery>, QueryRejection>,
) -> Result<Json<Vec<ExecutionDto>>, ApiError> {
    state.store.task_job(&caller.session.scope, id).await?;
    let of_job = store::ExecutionQuery {
        job_id: Some(id),
        ..Default::default()
    };
    executions_page(&state, &caller, query(q)?, of_job, 100).await
}

#[utoipa::path(
    get,
    path = "/api/v1/executions/{id}",
    tag = "tasks",
    params(("id" = i64, Path, description = "the object's id")),
    responses(
        (status = 200, description = "one execution with its result", body = ExecutionDto),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 404, response = crate::error::NotInScope)
    )
)]
pub(super) async fn get_execution(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
) -> Result<Json<ExecutionDto>, ApiError> {
    let execution = state
        .store
        .task_execution(&caller.session.scope, id)
        .await?;
    Ok(Json(execution.into()))
}

#[utoipa::path(
    post,
    path = "/api/v1/executions/{id}/cancel",
    tag = "tasks",
    params(("id" = i64, Path, description = "the object's id")),
    responses(
        (status = 200, description = "cancelled", body = ExecutionDto),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 403, response = crate::error::NotAllowed),
        (status = 404, response = crate::error::NotInScope),
        (status = 409, description = "the execution is already final", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
pub(super) async fn cancel_execution(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
) -> Result<Json<ExecutionDto>, ApiError> {
    require_runner(&caller)?;
    let execution = platform::tasks::cancel_execution(
        &state.store,
        &caller.session.scope,
        &caller.session.user.username,
        id,
    )
    .await?;
    Ok(Json(execution.into()))
}

#[utoipa::path(
    post,
    path = "/api/v1/executions/{id}/retry",
    tag = "tasks",
    params(("id" = i64, Path, description = "the object's id")),
    responses(
        (status = 201, description = "a new job of one runs the same task on the device", body = JobDto),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 403, response = crate::error::NotAllowed),
        (status = 404, response = crate::error::NotInScope),
        (status = 409, description = "the execution is still open", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
pub(super) async fn retry_execution(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
) -> Result<(axum::http::StatusCode, Json<JobDto>), ApiError> {
    require_runner(&caller)?;
    let tasks = tasks_of(&state)?;
    let job = platform::tasks::retry_execution(
        &state.store,
        &caller.session.scope,
        &caller.session.user.username,
        id,
    )
    .await?;
    tasks.wake();
    let dto = job_dto(&state, job).await?;
    Ok((axum::http::StatusCode::CREATED, Json(dto)))
}

#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}/live",
    tag = "tasks",
    params(("id" = i64, Path, description = "the object's id")),
    responses(
        (status = 101, description = "switching to the WebSocket protocol: each change as {execution_id, device_id, state}"),
        (status = 400, description = "not a WebSocket request, or a bad id", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 404, response = crate::error::NotInScope)
    )
)]
pub(super) async fn job_live(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
    upgrade: Result<
        axum::extract::ws::WebSocketUpgrade,
        axum::extract::ws::rejection::WebSocketUpgradeRejection,
    >,
) -> Result<Response, ApiError> {
    state.store.task_job(&caller.session.scope, id).await?;
    let upgrade = upgrade.map_err(|e| ApiError::bad_request(e.body_text()))?;
    // A slow page skips changes; it reloads the counts.
    Ok(live_events(
        upgrade,
        tasks_of(&state)?.subscribe(),
        move |e| {
            (e.job_id == id).then(|| {
                serde_json::json!({
                    "execution_id": e.execution_id,
                    "device_id": e.device_id,
                    "state": e.state,
                })
                .to_string()
            })
        },
    ))
}

#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}/config",
    tag = "tasks",
    params(("id" = i64, Path, description = "the object's id")),
    responses(
        (status = 200, description = "the configuration the device should run against the one it reported; `drift` when they differ", body = DeviceConfigDto),
        (status = 400, response = crate::error::BadRequest),
        (status = 401, response = crate::error::Unauthenticated),
        (status = 404, response = crate::error::NotInScope)
    )
)]
pub(super) async fn device_config(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Id(id): Id,
) -> Result<Json<DeviceConfigDto>, ApiError> {
    let config = state
        .store
        .device_config(&caller.session.scope, id)
        .await?
        .unwrap_or(store::DeviceConfig {
            device_id: id,
            desired_version: None,
            desired_document: None,
            desired_job: None,
            desired_at: None,
            reported_version: None,
            reported_state: None,
            reported_at: None,
        });
    Ok(Json(DeviceConfigDto {
        drift: config.desired_version.is_some()
            && config.desired_version != config.reported_version,
        desired_version: config.desired_version,
        desired_document: config
            .desired_document
            .and_then(|d| serde_json::from_str(&d).ok()),
        desired_job: config.desired_job,
        desired_at: config.desired_at,
        reported_version: config.reported_version,
        reported_state: config.reported_state,
        reported_at: config.reported_at,
    }))
}
