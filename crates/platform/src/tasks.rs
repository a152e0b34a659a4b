//! Remote tasks: a job runs one task type on one device or a selection of
//! devices, one execution each. [`TaskService`] sends executions to
//! devices that are online (so an offline device gets its task when it is
//! back), takes their answers, retries failed and timed-out attempts with
//! backoff, holds every execution to a deadline, stops a job when its
//! failure ratio passes the abort rule, and closes a job when every
//! execution is final.
//!
//! Sending goes through a [`TaskTransport`] (the embedded broker, or a
//! client of an external one). Every decision is written conditionally on
//! the state it was made from (see `store::tasks`), so several instances on
//! one database send each attempt once and never let a late answer undo a
//! newer state.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use device_protocol::task::{
    self, AnswerState, TASK_VERSION, TaskAnswer, TaskParams, TaskRequest, TaskTopic,
};
use serde::{Deserialize, Serialize};
use store::{
    ClaimedExecution, DeviceQuery, ExecutionChange, NewAuditEntry, NewTaskJob, OpenExecution,
    Scope, Store, StoreError, TaskJob,
};
use tokio::sync::{broadcast, mpsc, watch};

/// Most devices one job may name.
pub const MAX_JOB_DEVICES: usize = 100_000;
/// Answers waiting to be written; past it new answers are dropped and
/// counted (their executions then meet their deadlines).
const ANSWER_QUEUE: usize = 200_000;
/// Answers written in one transaction.
const ANSWER_BATCH: usize = 2_000;
/// Executions claimed per job and round.
const CLAIM_BATCH: usize = 1_000;
const DISPATCH_EVERY: Duration = Duration::from_millis(250);
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// The longest a retry waits.
const MAX_BACKOFF_SECS: i64 = 3_600;

/// Why a task request was refused.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("{field}: {message}")]
    Field {
        field: &'static str,
        message: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn field(field: &'static str, message: impl Into<String>) -> TaskError {
    TaskError::Field {
        field,
        message: message.into(),
    }
}

/// Which devices a bulk job runs on: listed, or every device matching a
/// filter (within the caller's organisation).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceFilter {
    pub model_id: Option<i64>,
    pub organisation_id: Option<i64>,
    pub label: Option<String>,
    pub firmware_version: Option<String>,
    pub online: Option<bool>,
}

/// A job as a user asks for it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobRequest {
    pub kind: String,
    pub params: serde_json::Value,
    pub device_ids: Option<Vec<i64>>,
    pub filter: Option<DeviceFilter>,
    pub description: Option<String>,
    /// From delivery to a final answer, per attempt.
    pub timeout_secs: Option<i64>,
    /// How long an offline device's execution waits to be delivered.
    pub expires_in_secs: Option<i64>,
    pub max_retries: Option<i64>,
    pub retry_backoff_secs: Option<i64>,
    pub rollout_per_minute: Option<i64>,
    pub abort_failure_ratio: Option<f64>,
    pub abort_min_finished: Option<i64>,
}

/// How long each type may take once delivered, unless the job says.
pub fn default_timeout_secs(kind: &str) -> i64 {
    match kind {
        "reboot" => 300,
        "traceroute" => 180,
        "black_box" => 600,
        "configure" => 300,
        _ => 120,
    }
}

/// Checks a request and turns it into a job of devices in `scope`.
pub async fn create_job(
    store: &Store,
    scope: &Scope,
    actor: &str,
    request: &JobRequest,
) -> Result<TaskJob, TaskError> {
    let params =
        TaskParams::from_parts(&request.kind, &request.params).map_err(|m| field("params", m))?;
    match &params {
        TaskParams::RemoteSession(_) => {
            return Err(field(
                "type",
                "remote sessions are opened with POST /api/v1/devices/{id}/sessions",
            ));
        }
        TaskParams::FirmwareUpdate(_) | TaskParams::FirmwareRollback {} => {
            return Err(field(
                "type",
                "firmware is installed by campaigns: POST /api/v1/campaigns",
            ));
        }
        _ => {}
    }
    if let TaskParams::BlackBox(b) = &params
        && b.upload_url.is_some()
    {
        // Where a device's black box goes is the platform's choice alone.
        return Err(field(
            "params",
            "upload_url is made by the platform for each execution",
        ));
    }
    let range = |name: &'static str, value: Option<i64>, min: i64, max: i64, default: i64| {
        let v = value.unwrap_or(default);
        if v < min || v > max {
            Err(field(name, format!("must be {min} to {max}")))
        } else {
            Ok(v)
        }
    };
    let timeout_secs = range(
        "timeout_secs",
        request.timeout_secs,
        5,
        86_400,
        default_timeout_secs(params.kind()),
    )?;
    let expires_in = range(
        "expires_in_secs",
        request.expires_in_secs,
        10,
        30 * 86_400,
        86_400,
    )?;
    let max_retries = range("max_retries", request.max_retries, 0, 10, 0)?;
    let backoff = range(
        "retry_backoff_secs",
        request.retry_backoff_secs,
        1,
        MAX_BACKOFF_SECS,
        30,
    )?;
    if let Some(rate) = request.rollout_per_minute
        && !(1..=1_000_000).contains(&rate)
    {
        return Err(field("rollout_per_minute", "must be 1 to 1000000"));
    }
    if let Some(ratio) = request.abort_failure_ratio
        && !(ratio > 0.0 && ratio <= 1.0)
    {
        return Err(field(
            "abort_failure_ratio",
            "must be above 0 and at most 1",
        ));
    }
    let abort_min = match request.abort_failure_ratio {
        Some(_) => Some(range(
            "abort_min_finished",
            request.abort_min_finished,
            1,
            MAX_JOB_DEVICES as i64,
            10,
        )?),
        None => None,
    };
    let description = request
        .description
        .as_deref()
        .map(str::trim)
        .unwrap_or_default();
    if description.len() > 200 {
        return Err(field("description", "at most 200 bytes"));
    }
    let device_ids = match (&request.device_ids, &request.filter) {
        (Some(ids), None) => {
            if ids.is_empty() || ids.len() > MAX_JOB_DEVICES {
                return Err(field(
                    "device_ids",
                    format!("name 1 to {MAX_JOB_DEVICES} devices"),
                ));
            }
            ids.clone()
        }
        (None, Some(filter)) => select_devices(store, scope, filter).await?,
        _ => {
            return Err(field(
                "device_ids",
                "give either device_ids or filter, not both or neither",
            ));
        }
    };
    if device_ids.is_empty() {
        return Err(field("filter", "matches no device"));
    }
    let configuration = match &params {
        TaskParams::Configure(c) => Some((c.version, c.document.to_string())),
        _ => None,
    };
    let job = store
        .create_task_job(
            scope,
            &NewTaskJob {
                organisation_id: scope.organisation_id,
                kind: params.kind().to_owned(),
                parameters: params.params().to_string(),
                description: description.to_owned(),
                created_by: actor.to_owned(),
                timeout_secs,
                expires_at: store::now_millis() + expires_in * 1000,
                max_retries,
                retry_backoff_secs: backoff,
                rollout_per_minute: request.rollout_per_minute,
                abort_failure_ratio: request.abort_failure_ratio,
                abort_min_finished: abort_min,
                device_ids: device_ids.clone(),
            },
        )
        .await?;
    if let Some((version, document)) = configuration {
        // What these devices should run from now on, whatever they report.
        store
            .set_desired_config(&device_ids, version, &document, job.id)
            .await?;
    }
    store
        .record_audit(&NewAuditEntry {
            organisation_id: job.organisation_id,
            actor: actor.to_owned(),
            action: "task.create".into(),
            target: format!("job {}", job.id),
            before_value: None,
            after_value: Some(format!(
                "{} on {} device(s): {}",
                job.kind, job.total, job.parameters
            )),
            address: None,
        })
        .await?;
    Ok(job)
}

/// A job the platform makes itself (a remote session's opening, a
/// campaign wave): the type is not one a user may ask for, and the system
/// log entry is the maker's.
pub(crate) struct PlatformJob<'a> {
    pub params: TaskParams,
    pub description: String,
    pub device_ids: Vec<i64>,
    pub timeout_secs: i64,
    /// How long an offline device's execution waits to be delivered.
    pub expires_in_secs: i64,
    pub max_retries: i64,
    pub actor: &'a str,
}

pub(crate) async fn create_platform_job(
    store: &Store,
    scope: &Scope,
    job: PlatformJob<'_>,
) -> Result<TaskJob, TaskError> {
    Ok(store
        .create_task_job(
            scope,
            &NewTaskJob {
                organisation_id: scope.organisation_id,
                kind: job.params.kind().to_owned(),
                parameters: job.params.params().to_string(),
                description: job.description,
                created_by: job.actor.to_owned(),
                timeout_secs: job.timeout_secs,
                expires_at: store::now_millis() + job.expires_in_secs * 1000,
                max_retries: job.max_retries,
                retry_backoff_secs: 30,
                rollout_per_minute: None,
                abort_failure_ratio: None,
                abort_min_finished: None,
                device_ids: job.device_ids,
            },
        )
        .await?)
}

/// Every device in `scope` matching `filter`.
async fn select_devices(
    store: &Store,
    scope: &Scope,
    filter: &DeviceFilter,
) -> Result<Vec<i64>, TaskError> {
    Ok(matching_devices(store, scope, filter)
        .await?
        .iter()
        .map(|d| d.id)
        .collect())
}

/// Every device in `scope` matching `filter`, at most [`MAX_JOB_DEVICES`].
pub(crate) async fn matching_devices(
    store: &Store,
    scope: &Scope,
    filter: &DeviceFilter,
) -> Result<Vec<store::Device>, TaskError> {
    let mut ids = Vec::new();
    let mut query = DeviceQuery {
        model_id: filter.model_id,
        organisation_id: filter.organisation_id,
        label: filter.label.clone(),
        firmware_version: filter.firmware_version.clone(),
        online: filter.online,
        limit: 1000,
        ..DeviceQuery::default()
    };
    loop {
        let page = store.devices(scope, &query).await?;
        ids.extend(page.devices);
        if ids.len() > MAX_JOB_DEVICES {
            return Err(field(
                "filter",
                format!("matches more than {MAX_JOB_DEVICES} devices"),
            ));
        }
        match page.next {
            Some(next) => query.after = Some(next),
            None => return Ok(ids),
        }
    }
}

/// Cancels a running job: nothing more is sent and every open execution
/// is cancelled (a device still working may finish, but its answer is
/// refused).
pub async fn cancel_job(
    store: &Store,
    scope: &Scope,
    actor: &str,
    job_id: i64,
) -> Result<TaskJob, TaskError> {
    let job = store.task_job(scope, job_id).await?;
    if job.state != "running" {
        return Err(field("state", format!("the job is {}", job.state)));
    }
    store.stop_task_job(job_id, "cancelled").await?;
    let open = store
        .open_executions_of_job(job_id, &store::OPEN_STATES)
        .await?;
    let changes: Vec<ExecutionChange> = open
        .iter()
        .map(|e| {
            let mut c = ExecutionChange::new(e, "cancelled");
            c.error = Some(format!("cancelled by {actor}"));
            c
        })
        .collect();
    store.apply_execution_changes(&changes).await?;
    store.close_task_job(job_id).await?;
    store
        .record_audit(&NewAuditEntry {
            organisation_id: job.organisation_id,
            actor: actor.to_owned(),
            action: "task.cancel".into(),
            target: format!("job {job_id}"),
            before_value: Some("running".into()),
            after_value: Some(format!("cancelled, {} open execution(s)", open.len())),
            address: None,
        })
        .await?;
    Ok(store.task_job(scope, job_id).await?)
}

/// Cancels one open execution.
pub async fn cancel_execution(
    store: &Store,
    scope: &Scope,
    actor: &str,
    execution_id: i64,
) -> Result<store::TaskExecution, TaskError> {
    let execution = store.task_execution(scope, execution_id).await?;
    let open = store.open_executions(&[execution_id]).await?;
    let Some(row) = open.first() else {
        return Err(field(
            "state",
            format!("the execution is {}", execution.state),
        ));
    };
    let mut change = ExecutionChange::new(row, "cancelled");
    change.error = Some(format!("cancelled by {actor}"));
    if store.apply_execution_changes(&[change]).await?.is_empty() {
        return Err(field("state", "the execution changed meanwhile; try again"));
    }
    close_if_done(store, &[row.job_id]).await?;
    store
        .record_audit(&NewAuditEntry {
            organisation_id: execution.organisation_id,
            actor: actor.to_owned(),
            action: "task.cancel".into(),
            target: format!("execution {execution_id} (job {})", execution.job_id),
            before_value: Some(execution.state.clone()),
            after_value: Some("cancelled".into()),
            address: None,
        })
        .await?;
    Ok(store.task_execution(scope, execution_id).await?)
}

/// Runs a final execution's task again on its device, as a new job of one.
pub async fn retry_execution(
    store: &Store,
    scope: &Scope,
    actor: &str,
    execution_id: i64,
) -> Result<TaskJob, TaskError> {
    let execution = store.task_execution(scope, execution_id).await?;
    if store::OPEN_STATES.contains(&execution.state.as_str()) {
        return Err(field(
            "state",
            format!("the execution is still {}", execution.state),
        ));
    }
    let job = store.task_job(scope, execution.job_id).await?;
    let params: serde_json::Value =
        serde_json::from_str(&job.parameters).unwrap_or(serde_json::Value::Null);
    create_job(
        store,
        scope,
        actor,
        &JobRequest {
            kind: job.kind.clone(),
            params,
            device_ids: Some(vec![execution.device_id]),
            description: Some(format!("retry of execution {execution_id}")),
            timeout_secs: Some(job.timeout_secs),
            ..JobRequest::default()
        },
    )
    .await
}

/// Closes each job among `jobs` whose executions are all final.
pub(crate) async fn close_if_done(store: &Store, jobs: &[i64]) -> Result<Vec<i64>, StoreError> {
    let counts = store.execution_counts(jobs).await?;
    let mut closed = Vec::new();
    for job in jobs {
        if counts.get(job).is_none_or(|c| c.open() == 0) && store.close_task_job(*job).await? {
            closed.push(*job);
        }
    }
    Ok(closed)
}

/// Sends a request to a device.
pub trait TaskTransport: Send + Sync + 'static {
    fn send(&self, request: OutgoingRequest);
    /// A remote-session frame to a device's `sessions/{id}/in`: QoS 1, not
    /// retained, expiring after a few seconds (a frame late by more is of
    /// no use to a session).
    fn send_session(&self, topic: String, payload: Bytes);
}

/// A request ready for the broker: QoS 1, not retained.
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingRequest {
    pub topic: String,
    pub payload: Bytes,
    /// MQTT 5 response topic [MQTT-3.3.2-12] and correlation data: a 5.0
    /// device answers there with the same correlation data.
    pub response_topic: String,
    pub correlation: Bytes,
    /// Message expiry: a request the broker still holds at the deadline
    /// is dropped rather than delivered late [MQTT-3.3.2-5].
    pub expiry_secs: u32,
}

/// A change a console page shows live.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskEvent {
    pub job_id: i64,
    pub execution_id: i64,
    pub device_id: i64,
    pub state: String,
}

#[derive(Debug, Default)]
pub struct TaskCounters {
    pub sent: AtomicU64,
    pub answers: AtomicU64,
    /// Answers refused: malformed, for an execution the device was not
    /// sent, for another attempt, or after the execution was final.
    pub answers_refused: AtomicU64,
    /// Answers dropped because too many waited to be written.
    pub answers_dropped: AtomicU64,
    pub timed_out: AtomicU64,
    pub retried: AtomicU64,
    pub jobs_aborted: AtomicU64,
}

impl TaskCounters {
    /// Prometheus text of the counters.
    pub fn prometheus(&self) -> String {
        let counters = [
            ("sent", "task requests sent to devices", &self.sent),
            ("answers", "task answers taken", &self.answers),
            (
                "answers_refused",
                "task answers refused (malformed, unsent, stale)",
                &self.answers_refused,
            ),
            (
                "answers_dropped",
                "task answers dropped while too many waited",
                &self.answers_dropped,
            ),
            (
                "timed_out",
                "executions past their deadline",
                &self.timed_out,
            ),
            (
                "retried",
                "executions queued again for a retry",
                &self.retried,
            ),
            (
                "jobs_aborted",
                "jobs stopped by their failure rule",
                &self.jobs_aborted,
            ),
        ];
        counters
            .iter()
            .map(|(name, help, value)| {
                format!(
                    "# HELP telemark_tasks_{name}_total {help}\n# TYPE telemark_tasks_{name}_total counter\ntelemark_tasks_{name}_total {}\n",
                    value.load(Ordering::Relaxed)
                )
            })
            .collect()
    }
}

enum Incoming {
    Answer {
        device_id: i64,
        mac: String,
        topic: TaskTopic,
        payload: Bytes,
    },
    Boot {
        device_id: i64,
        boot_id: String,
    },
}

/// Hooks a completed execution of some type has beyond its own row.
#[derive(Debug, Clone, PartialEq)]
struct Completion {
    kind: String,
    device_id: i64,
    result: Option<serde_json::Value>,
}

pub struct TaskService {
    store: Store,
    /// The platform's base URL as devices reach it, for black-box uploads.
    upload_base: Option<String>,
    /// With an embedded broker: this instance, which sends only to the
    /// devices connected to it.
    instance: Option<String>,
    transport: Arc<dyn TaskTransport>,
    incoming: mpsc::Sender<Incoming>,
    receiver: tokio::sync::Mutex<mpsc::Receiver<Incoming>>,
    events: broadcast::Sender<TaskEvent>,
    wake: tokio::sync::Notify,
    /// Remote access, which opens sessions as tasks and learns their outcome.
    remote: std::sync::OnceLock<std::sync::Weak<crate::remote::RemoteSessions>>,
    /// Signs the download URL a firmware update carries.
    firmware: std::sync::OnceLock<crate::firmware::DownloadTokens>,
    pub counters: TaskCounters,
}

impl TaskService {
    /// `instance`: the id this platform instance records devices' presence
    /// under, when its embedded broker holds their connections; None when
    /// every instance reaches every device (an external broker).
    /// `upload_base`: the platform's URL as devices reach it (black-box
    /// uploads go to `{upload_base}/api/v1/black-box/{token}`).
    pub fn new(
        store: Store,
        transport: Arc<dyn TaskTransport>,
        instance: Option<String>,
        upload_base: Option<String>,
    ) -> Arc<Self> {
        let (incoming, receiver) = mpsc::channel(ANSWER_QUEUE);
        Arc::new(TaskService {
            store,
            upload_base,
            instance,
            transport,
            incoming,
            receiver: tokio::sync::Mutex::new(receiver),
            events: broadcast::channel(4096).0,
            wake: tokio::sync::Notify::new(),
            remote: std::sync::OnceLock::new(),
            firmware: std::sync::OnceLock::new(),
            counters: TaskCounters::default(),
        })
    }

    /// Firmware downloads: each `firmware_update` request gets a URL of its
    /// own under `upload_base`, valid until the execution's deadline.
    pub fn set_firmware_tokens(&self, tokens: crate::firmware::DownloadTokens) {
        let _ = self.firmware.set(tokens);
    }

    pub(crate) fn set_remote(&self, remote: std::sync::Weak<crate::remote::RemoteSessions>) {
        let _ = self.remote.set(remote);
    }

    fn remote(&self) -> Option<Arc<crate::remote::RemoteSessions>> {
        self.remote.get().and_then(std::sync::Weak::upgrade)
    }

    /// Changes of executions as they happen, for live pages.
    pub fn subscribe(&self) -> broadcast::Receiver<TaskEvent> {
        self.events.subscribe()
    }

    /// Asks for a dispatch round now (a new job, a device back online).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// A message on a device's `tasks/…` topics, from the ingest. Never
    /// blocks: the answers are written by [`TaskService::run`].
    pub fn take_answer(&self, device_id: i64, mac: &str, topic: TaskTopic, payload: Bytes) {
        self.queue(Incoming::Answer {
            device_id,
            mac: mac.to_owned(),
            topic,
            payload,
        });
    }

    /// A device said it is online with this boot id.
    pub fn take_boot(&self, device_id: i64, boot_id: &str) {
        self.queue(Incoming::Boot {
            device_id,
            boot_id: boot_id.to_owned(),
        });
    }

    fn queue(&self, item: Incoming) {
        if self.incoming.try_send(item).is_err() {
            self.counters
                .answers_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sends, sweeps and writes answers until `stop` turns true.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut receiver = self.receiver.lock().await;
        let mut dispatch = tokio::time::interval(DISPATCH_EVERY);
        dispatch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(ANSWER_BATCH);
        loop {
            tokio::select! {
                // The guard wait_for returns is not Send: drop it in place.
                _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
                n = receiver.recv_many(&mut batch, ANSWER_BATCH) => {
                    if n == 0 {
                        return;
                    }
                    self.handle_with_retries(std::mem::take(&mut batch)).await;
                }
                _ = dispatch.tick() => self.log(self.dispatch().await, "task dispatch"),
                _ = self.wake.notified() => self.log(self.dispatch().await, "task dispatch"),
                _ = sweep.tick() => self.log(self.sweep().await, "task deadlines"),
            }
        }
    }

    fn log<T>(&self, result: Result<T, StoreError>, what: &str) {
        if let Err(e) = result {
            tracing::warn!(error = %e, "{what} failed");
        }
    }

    /// Sends the executions that are due to devices that are online.
    pub async fn dispatch(&self) -> Result<usize, StoreError> {
        let now = store::now_millis();
        let mut sent = 0;
        let instance = self.instance.as_deref();
        for job in self.store.jobs_with_due_executions(now, instance).await? {
            let claimed = self
                .store
                .claim_executions(job, now, CLAIM_BATCH, instance)
                .await?;
            for execution in &claimed {
                let mut params: serde_json::Value =
                    serde_json::from_str(&execution.parameters).unwrap_or_default();
                if execution.kind == "black_box"
                    && let Some(base) = &self.upload_base
                {
                    params["upload_url"] = self.bundle_slot(base, execution).await?.into();
                }
                if execution.kind == "firmware_update"
                    && let (Some(base), Some(tokens)) = (&self.upload_base, self.firmware.get())
                {
                    let image = params["image"].as_i64().unwrap_or_default();
                    let token = tokens.issue(image, execution.device_id, execution.deadline);
                    params["url"] = format!("{base}/api/v1/firmware-downloads/{token}").into();
                }
                if execution.kind == "remote_session" {
                    let session = params["session"].as_str().unwrap_or_default().to_owned();
                    match self
                        .remote()
                        .and_then(|r| r.request_params(&session, execution.id, params))
                    {
                        Some(filled) => params = filled,
                        // Its session ended before delivery: nothing to open.
                        None => continue,
                    }
                }
                self.send(execution, params, now);
                self.event(job, execution.id, execution.device_id, "sent");
            }
            sent += claimed.len();
        }
        self.counters.sent.fetch_add(sent as u64, Ordering::Relaxed);
        Ok(sent)
    }

    /// A one-time upload URL for a black-box execution, valid until its
    /// deadline; only the token's SHA-256 is stored.
    async fn bundle_slot(
        &self,
        base: &str,
        execution: &ClaimedExecution,
    ) -> Result<String, StoreError> {
        let token = crate::accounts::new_token();
        self.store
            .open_bundle_slot(
                execution.device_id,
                execution.id,
                &crate::accounts::sha256_hex(token.as_bytes()),
                execution.deadline,
            )
            .await?;
        Ok(format!(
            "{}/api/v1/black-box/{token}",
            base.trim_end_matches('/')
        ))
    }

    fn send(&self, execution: &ClaimedExecution, params: serde_json::Value, now: i64) {
        let attempt = u32::try_from(execution.attempt).unwrap_or(u32::MAX);
        let request = TaskRequest {
            v: TASK_VERSION,
            ts: now,
            id: execution.id,
            attempt,
            kind: execution.kind.clone(),
            params,
            deadline: execution.deadline,
        };
        let (model, mac) = (&execution.topic_segment, &execution.mac);
        self.transport.send(OutgoingRequest {
            topic: task::request_topic(model, mac, execution.id),
            payload: serde_json::to_vec(&request).unwrap_or_default().into(),
            response_topic: task::result_topic(model, mac, execution.id),
            correlation: task::correlation(execution.id, attempt).into_bytes().into(),
            expiry_secs: u32::try_from(((execution.deadline - now) / 1000).max(1))
                .unwrap_or(u32::MAX),
        });
    }

    fn event(&self, job_id: i64, execution_id: i64, device_id: i64, state: &str) {
        if store::FINAL_STATES.contains(&state)
            && let Some(remote) = self.remote()
        {
            let state = state.to_owned();
            tokio::spawn(async move { remote.task_final(execution_id, &state).await });
        }
        let _ = self.events.send(TaskEvent {
            job_id,
            execution_id,
            device_id,
            state: state.to_owned(),
        });
    }

    /// Retries or times out executions past their deadlines.
    pub async fn sweep(&self) -> Result<usize, StoreError> {
        let now = store::now_millis();
        let overdue = self.store.overdue_executions(now, 5_000).await?;
        if overdue.is_empty() {
            return Ok(0);
        }
        let running: HashSet<i64> = self
            .store
            .unfinished_jobs(&job_ids(&overdue))
            .await?
            .into_iter()
            .filter(|j| j.state == "running")
            .map(|j| j.id)
            .collect();
        let changes: Vec<ExecutionChange> = overdue
            .iter()
            .map(|e| {
                if e.state == "queued" {
                    let mut c = ExecutionChange::new(e, "timed_out");
                    c.error = Some(if e.attempt == 0 {
                        "not delivered before the job expired (the device stayed offline)".into()
                    } else {
                        "the retry was not delivered before the job expired".into()
                    });
                    return c;
                }
                let why = format!("no final answer within {} s", e.timeout_secs);
                retry_or(e, "timed_out", why, running.contains(&e.job_id), now)
            })
            .collect();
        let applied = self.store.apply_execution_changes(&changes).await?;
        self.after_changes(&changes, &applied, &overdue, now)
            .await?;
        Ok(applied.len())
    }

    /// Writes a batch, retrying while the database refuses (a deadlock, a
    /// restart): each change is conditional on the state it was decided
    /// from, so a batch that half-happened is decided again from where it
    /// stopped.
    async fn handle_with_retries(&self, batch: Vec<Incoming>) {
        let mut answers = Vec::new();
        let mut boots = Vec::new();
        for item in batch {
            match item {
                Incoming::Answer {
                    device_id,
                    mac,
                    topic,
                    payload,
                } => match task::parse_answer(topic, &payload) {
                    Ok(answer) => answers.push((device_id, mac, answer)),
                    Err(e) => self.refuse(device_id, &mac, e.to_string()).await,
                },
                Incoming::Boot { device_id, boot_id } => boots.push((device_id, boot_id)),
            }
        }
        let mut wait = Duration::from_millis(100);
        for attempt in 1..=8 {
            let now = store::now_millis();
            // A device's answers arrive before it reboots and says it is
            // back, so answers go first: a reboot is `in_progress` before
            // its boot.
            let written = match self.handle_answers(&answers, now).await {
                Ok(()) => self.handle_boots(&boots, now).await,
                Err(e) => Err(e),
            };
            match written {
                Ok(()) => return,
                Err(e) if attempt < 8 => {
                    tracing::warn!(error = %e, retry_in = ?wait, "task answers not written; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    let lost = answers.len() + boots.len();
                    self.counters
                        .answers_dropped
                        .fetch_add(lost as u64, Ordering::Relaxed);
                    tracing::warn!(error = %e, dropped = lost, "task answers given up; their executions meet their deadlines");
                }
            }
        }
    }

    async fn handle_answers(
        &self,
        answers: &[(i64, String, TaskAnswer)],
        now: i64,
    ) -> Result<(), StoreError> {
        if answers.is_empty() {
            return Ok(());
        }
        self.counters
            .answers
            .fetch_add(answers.len() as u64, Ordering::Relaxed);
        let ids: Vec<i64> = answers.iter().map(|(_, _, a)| a.id).collect();
        let mut open: HashMap<i64, OpenExecution> = self
            .store
            .open_executions(&ids)
            .await?
            .into_iter()
            .map(|e| (e.id, e))
            .collect();
        let running: HashSet<i64> = self
            .store
            .unfinished_jobs(&job_ids(open.values()))
            .await?
            .into_iter()
            .filter(|j| j.state == "running")
            .map(|j| j.id)
            .collect();
        let mut changes = Vec::new();
        let mut rows = Vec::new();
        for (device_id, mac, answer) in answers {
            let device_id = *device_id;
            let Some(row) = open
                .get_mut(&answer.id)
                .filter(|e| e.device_id == device_id)
            else {
                let why = format!(
                    "answer to execution {}, which is not open for this device (never sent to it, final, or past its deadline)",
                    answer.id
                );
                self.refuse(device_id, mac, why).await;
                continue;
            };
            if row.state == "queued" || i64::from(answer.attempt) != row.attempt {
                let why = format!(
                    "answer to attempt {} of execution {}, which is at attempt {} ({})",
                    answer.attempt, answer.id, row.attempt, row.state
                );
                self.refuse(device_id, mac, why).await;
                continue;
            }
            let change = decide(row, answer, running.contains(&row.job_id), now);
            // Later answers of this batch start from this one's outcome;
            // each change is conditional on the one before, applied in order.
            rows.push(row.clone());
            row.state = change.state.clone();
            changes.push(change);
        }
        let applied = self.store.apply_execution_changes(&changes).await?;
        self.after_changes(&changes, &applied, &rows, now).await
    }

    /// Devices back online with a boot id: their reboots that were under
    /// way with another boot id succeeded.
    async fn handle_boots(&self, boots: &[(i64, String)], now: i64) -> Result<(), StoreError> {
        if boots.is_empty() {
            return Ok(());
        }
        // The latest boot of each device.
        let latest: HashMap<i64, String> = boots.iter().cloned().collect();
        let pairs: Vec<(i64, String)> = latest.iter().map(|(d, b)| (*d, b.clone())).collect();
        self.store.set_devices_boot_ids(&pairs).await?;
        let devices: Vec<i64> = latest.keys().copied().collect();
        let pending = self.store.pending_reboots(&devices).await?;
        let changes: Vec<ExecutionChange> = pending
            .iter()
            .filter_map(|e| {
                let boot_id = latest.get(&e.device_id)?;
                (e.state == "in_progress" && e.boot_id.as_deref().is_some_and(|b| b != boot_id))
                    .then(|| {
                        let mut c = ExecutionChange::new(e, "succeeded");
                        c.progress = Some(100);
                        c.message = Some("back online after the reboot".into());
                        c.result = Some(
                            serde_json::json!({
                                "boot_id_before": e.boot_id,
                                "boot_id_after": boot_id,
                            })
                            .to_string(),
                        );
                        c
                    })
            })
            .collect();
        let applied = self.store.apply_execution_changes(&changes).await?;
        self.after_changes(&changes, &applied, &pending, now).await
    }

    /// Refuses an answer and records it against the device, like a message
    /// that breaks the telemetry contract.
    async fn refuse(&self, device_id: i64, mac: &str, why: String) {
        self.counters
            .answers_refused
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(device = %mac, reason = %why, "task answer refused");
        if let Err(e) = self.store.record_telemetry_faults(device_id, 1, &why).await {
            tracing::warn!(error = %e, "task answer refusal not recorded");
        }
    }

    /// Events, the system log, type hooks and the job rules after changes.
    async fn after_changes(
        &self,
        changes: &[ExecutionChange],
        applied: &[i64],
        rows: &[OpenExecution],
        now: i64,
    ) -> Result<(), StoreError> {
        if applied.is_empty() {
            return Ok(());
        }
        let applied: HashSet<i64> = applied.iter().copied().collect();
        let by_id: HashMap<i64, &OpenExecution> = rows.iter().map(|r| (r.id, r)).collect();
        let mut audit = Vec::new();
        let mut completions = Vec::new();
        let mut jobs = HashSet::new();
        for change in changes.iter().filter(|c| applied.contains(&c.id)) {
            let Some(row) = by_id.get(&change.id) else {
                continue;
            };
            jobs.insert(row.job_id);
            self.event(row.job_id, row.id, row.device_id, &change.state);
            match change.state.as_str() {
                "timed_out" => {
                    self.counters.timed_out.fetch_add(1, Ordering::Relaxed);
                }
                "queued" => {
                    self.counters.retried.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
            if store::FINAL_STATES.contains(&change.state.as_str()) {
                audit.push(NewAuditEntry {
                    organisation_id: row.organisation_id,
                    actor: "platform".into(),
                    action: "task.result".into(),
                    target: format!(
                        "execution {} (job {}, device {})",
                        row.id, row.job_id, row.device_id
                    ),
                    before_value: Some(row.kind.clone()),
                    after_value: Some(match &change.error {
                        Some(error) => format!("{}: {error}", change.state),
                        None => change.state.clone(),
                    }),
                    address: None,
                });
                if row.kind == "configure" && change.state != "succeeded" {
                    let why = change.error.clone().unwrap_or_else(|| change.state.clone());
                    self.store
                        .set_reported_config(
                            row.device_id,
                            None,
                            &format!("{}: {why}", change.state),
                        )
                        .await?;
                }
                if change.state == "succeeded" {
                    completions.push(Completion {
                        kind: row.kind.clone(),
                        device_id: row.device_id,
                        result: change
                            .result
                            .as_deref()
                            .and_then(|r| serde_json::from_str(r).ok()),
                    });
                }
            }
        }
        self.store.record_audits(&audit).await?;
        for completion in completions {
            self.complete(completion, now).await?;
        }
        let jobs: Vec<i64> = jobs.into_iter().collect();
        self.apply_job_rules(&jobs).await
    }

    /// What a succeeded execution changes beyond itself.
    async fn complete(&self, completion: Completion, now: i64) -> Result<(), StoreError> {
        if completion.kind == "modem_status"
            && let Some(result) = completion
                .result
                .clone()
                .and_then(|r| serde_json::from_value::<device_protocol::task::ModemResult>(r).ok())
        {
            // The diagnostic fills the same radio panel the telemetry does.
            self.store
                .record_radio(&[store::RadioState {
                    device_id: completion.device_id,
                    technology: result.technology,
                    band: result.band,
                    carrier_aggregation: crate::telemetry::carrier_json(
                        &result.carrier_aggregation,
                    ),
                    operator: result.operator,
                    cell_id: result.cell_id.and_then(|c| i64::try_from(c).ok()),
                    smcc: None,
                    smnc: None,
                    source: "modem_status".into(),
                    updated_at: now,
                }])
                .await?;
        }
        if completion.kind == "configure" {
            let version = completion
                .result
                .as_ref()
                .and_then(|r| r.get("applied_version"))
                .and_then(|v| v.as_i64());
            self.store
                .set_reported_config(completion.device_id, version, "applied")
                .await?;
        }
        if completion.kind == "license_deploy"
            && let Some(key) = completion
                .result
                .as_ref()
                .and_then(|r| r.get("key"))
                .and_then(|k| k.as_str())
        {
            self.store
                .mark_license_deployed(key, completion.device_id)
                .await?;
        }
        Ok(())
    }

    /// The abort rule, then closing jobs whose executions are all final.
    async fn apply_job_rules(&self, jobs: &[i64]) -> Result<(), StoreError> {
        let unfinished = self.store.unfinished_jobs(jobs).await?;
        if unfinished.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = unfinished.iter().map(|j| j.id).collect();
        let counts = self.store.execution_counts(&ids).await?;
        for job in &unfinished {
            let c = counts.get(&job.id).cloned().unwrap_or_default();
            if job.state == "running"
                && let (Some(ratio), Some(min)) = (job.abort_failure_ratio, job.abort_min_finished)
            {
                let finished = c.finished();
                let failed = c.get("failed") + c.get("timed_out") + c.get("rejected");
                if finished >= min && failed as f64 / finished as f64 > ratio {
                    self.abort(job, failed, finished).await?;
                    continue;
                }
            }
            if c.open() == 0 {
                self.store.close_task_job(job.id).await?;
            }
        }
        Ok(())
    }

    async fn abort(&self, job: &TaskJob, failed: i64, finished: i64) -> Result<(), StoreError> {
        if !self.store.stop_task_job(job.id, "aborted").await? {
            return Ok(());
        }
        self.counters.jobs_aborted.fetch_add(1, Ordering::Relaxed);
        let why = format!(
            "job aborted: {failed} of {finished} finished executions failed, above the abort ratio {}",
            job.abort_failure_ratio.unwrap_or_default()
        );
        tracing::warn!(job = job.id, "{why}");
        // What was not sent is cancelled; what is out keeps its deadline.
        let queued = self
            .store
            .open_executions_of_job(job.id, &["queued"])
            .await?;
        let changes: Vec<ExecutionChange> = queued
            .iter()
            .map(|e| {
                let mut c = ExecutionChange::new(e, "cancelled");
                c.error = Some(why.clone());
                c
            })
            .collect();
        let applied = self.store.apply_execution_changes(&changes).await?;
        for id in &applied {
            if let Some(e) = queued.iter().find(|e| e.id == *id) {
                self.event(job.id, e.id, e.device_id, "cancelled");
            }
        }
        self.store
            .record_audit(&NewAuditEntry {
                organisation_id: job.organisation_id,
                actor: "platform".into(),
                action: "task.abort".into(),
                target: format!("job {}", job.id),
                before_value: Some("running".into()),
                after_value: Some(why),
                address: None,
            })
            .await?;
        close_if_done(&self.store, &[job.id]).await?;
        Ok(())
    }
}

fn job_ids<'a>(rows: impl IntoIterator<Item = &'a OpenExecution>) -> Vec<i64> {
    let mut ids: Vec<i64> = rows.into_iter().map(|r| r.job_id).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// A failed or timed-out attempt: queued again after a backoff while the
/// job runs, has retries left and has not expired; else final in `state`.
fn retry_or(
    e: &OpenExecution,
    state: &str,
    why: String,
    job_running: bool,
    now: i64,
) -> ExecutionChange {
    let retries_left = e.attempt <= e.max_retries;
    let backoff_ms = e
        .retry_backoff_secs
        .saturating_mul(1 << (e.attempt - 1).clamp(0, 10))
        .min(MAX_BACKOFF_SECS)
        * 1000;
    if job_running && retries_left && now + backoff_ms < e.expires_at {
        let mut c = ExecutionChange::new(e, "queued");
        c.not_before = Some(now + backoff_ms);
        c.deadline = Some(e.expires_at);
        c.error = Some(format!("attempt {}: {why}; retrying", e.attempt));
        c
    } else {
        let mut c = ExecutionChange::new(e, state);
        c.error = Some(why);
        c
    }
}

/// The next state of an open execution given the device's answer.
fn decide(
    row: &OpenExecution,
    answer: &TaskAnswer,
    job_running: bool,
    now: i64,
) -> ExecutionChange {
    let result = answer.result.as_ref().map(|r| r.to_string());
    let mut change = match answer.state {
        AnswerState::Accepted | AnswerState::InProgress => {
            let mut c = ExecutionChange::new(row, "in_progress");
            c.progress = Some(i64::from(answer.progress.unwrap_or(0)));
            if row.kind == "reboot" {
                c.boot_id = answer
                    .result
                    .as_ref()
                    .and_then(|r| r.get("boot_id"))
                    .and_then(|b| b.as_str())
                    .map(str::to_owned);
            }
            c
        }
        AnswerState::Succeeded => {
            let mut c = ExecutionChange::new(row, "succeeded");
            c.progress = Some(100);
            c
        }
        AnswerState::Rejected => {
            let mut c = ExecutionChange::new(row, "rejected");
            c.error = Some(
                answer
                    .error
                    .clone()
                    .unwrap_or_else(|| "rejected by the device".into()),
            );
            c
        }
        AnswerState::Failed => retry_or(
            row,
            "failed",
            answer
                .error
                .clone()
                .unwrap_or_else(|| "failed on the device".into()),
            job_running,
            now,
        ),
    };
    change.message = answer.message.clone();
    if change.state != "queued" {
        change.result = result;
    }
    change
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(state: &str, attempt: i64, max_retries: i64) -> OpenExecution {
        OpenExecution {
            id: 1,
            job_id: 2,
            device_id: 3,
            organisation_id: 1,
            kind: "ping".into(),
            state: state.into(),
            attempt,
            deadline: 0,
            boot_id: None,
            max_retries,
            retry_backoff_secs: 10,
            expires_at: 1_000_000,
            timeout_secs: 60,
        }
    }

    #[test]
    fn failures_retry_with_doubling_backoff_until_none_are_left() {
        let first = retry_or(&open("sent", 1, 2), "failed", "x".into(), true, 0);
        assert_eq!(
            (first.state.as_str(), first.not_before),
            ("queued", Some(10_000))
        );
        let second = retry_or(&open("sent", 2, 2), "failed", "x".into(), true, 0);
        assert_eq!(second.not_before, Some(20_000));
        let last = retry_or(&open("sent", 3, 2), "failed", "x".into(), true, 0);
        assert_eq!(last.state, "failed");
        let stopped = retry_or(&open("sent", 1, 2), "failed", "x".into(), false, 0);
        assert_eq!(stopped.state, "failed", "no retry once the job stopped");
        let expiring = retry_or(&open("sent", 1, 2), "timed_out", "x".into(), true, 995_000);
        assert_eq!(
            expiring.state, "timed_out",
            "no retry past the job's expiry"
        );
    }
}
