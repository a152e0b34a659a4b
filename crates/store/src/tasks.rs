//! Remote tasks: jobs (one task type over one or more devices) and their
//! executions (the task on one device). The store keeps the rows and makes
//! each change conditional on the state it was decided from, so several
//! instances sharing the database never send an execution twice or let a
//! late answer overwrite a newer state; the rules that decide (retries, the
//! abort rule, deadlines) live in `platform::tasks`.

use std::collections::HashMap;

use crate::{BeginWrite, Pool, Scope, Store, StoreError, now_millis, with_pool};

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct TaskJob {
    pub id: i64,
    pub organisation_id: i64,
    pub kind: String,
    /// The task's parameters, JSON.
    pub parameters: String,
    pub description: String,
    pub created_by: String,
    pub created_at: i64,
    /// `running`, `finished`, `cancelled` or `aborted`.
    pub state: String,
    pub finished_at: Option<i64>,
    pub total: i64,
    pub timeout_secs: i64,
    pub expires_at: i64,
    pub max_retries: i64,
    pub retry_backoff_secs: i64,
    pub rollout_per_minute: Option<i64>,
    pub abort_failure_ratio: Option<f64>,
    pub abort_min_finished: Option<i64>,
    pub started: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewTaskJob {
    pub organisation_id: i64,
    pub kind: String,
    pub parameters: String,
    pub description: String,
    pub created_by: String,
    pub timeout_secs: i64,
    pub expires_at: i64,
    pub max_retries: i64,
    pub retry_backoff_secs: i64,
    pub rollout_per_minute: Option<i64>,
    pub abort_failure_ratio: Option<f64>,
    pub abort_min_finished: Option<i64>,
    pub device_ids: Vec<i64>,
}

/// Executions of a job per state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecutionCounts {
    pub by_state: std::collections::BTreeMap<String, i64>,
}

impl ExecutionCounts {
    pub fn get(&self, state: &str) -> i64 {
        self.by_state.get(state).copied().unwrap_or(0)
    }

    /// Executions in a final state.
    pub fn finished(&self) -> i64 {
        FINAL_STATES.iter().map(|s| self.get(s)).sum()
    }

    /// Executions not yet final.
    pub fn open(&self) -> i64 {
        OPEN_STATES.iter().map(|s| self.get(s)).sum()
    }
}

/// States an execution leaves only by a rule or an answer.
pub const OPEN_STATES: [&str; 3] = ["queued", "sent", "in_progress"];
/// States an execution never leaves.
pub const FINAL_STATES: [&str; 5] = ["succeeded", "failed", "rejected", "timed_out", "cancelled"];

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct TaskExecution {
    pub id: i64,
    pub job_id: i64,
    pub device_id: i64,
    pub device_name: String,
    pub device_mac: String,
    pub organisation_id: i64,
    pub kind: String,
    pub state: String,
    pub attempt: i64,
    pub progress: Option<i64>,
    pub message: Option<String>,
    /// The result document, JSON.
    pub result: Option<String>,
    pub error: Option<String>,
    pub queued_at: i64,
    pub sent_at: Option<i64>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub deadline: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecutionQuery {
    pub job_id: Option<i64>,
    pub device_id: Option<i64>,
    pub state: Option<String>,
    /// Keyset pagination, newest first: executions with a smaller id.
    pub before_id: Option<i64>,
    pub limit: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobQuery {
    pub state: Option<String>,
    pub before_id: Option<i64>,
    pub limit: u32,
}

/// An execution just claimed for sending.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ClaimedExecution {
    pub id: i64,
    pub job_id: i64,
    pub device_id: i64,
    pub attempt: i64,
    pub deadline: i64,
    pub kind: String,
    pub parameters: String,
    pub mac: String,
    pub topic_segment: String,
}

/// An open execution with what the rules need to decide its next state.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct OpenExecution {
    pub id: i64,
    pub job_id: i64,
    pub device_id: i64,
    pub organisation_id: i64,
    pub kind: String,
    pub state: String,
    pub attempt: i64,
    pub deadline: i64,
    pub boot_id: Option<String>,
    pub max_retries: i64,
    pub retry_backoff_secs: i64,
    pub expires_at: i64,
    pub timeout_secs: i64,
}

/// A change to one execution, applied only if it is still in `from_state`
/// at `from_attempt`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionChange {
    pub id: i64,
    pub from_state: String,
    pub from_attempt: i64,
    pub state: String,
    pub progress: Option<i64>,
    pub message: Option<String>,
    pub result: Option<String>,
    pub error: Option<String>,
    /// The new deadline (a retry waits for delivery again).
    pub deadline: Option<i64>,
    /// A retry: not sent before this.
    pub not_before: Option<i64>,
    pub boot_id: Option<String>,
}

impl ExecutionChange {
    pub fn new(from: &OpenExecution, state: &str) -> Self {
        ExecutionChange {
            id: from.id,
            from_state: from.state.clone(),
            from_attempt: from.attempt,
            state: state.to_owned(),
            progress: None,
            message: None,
            result: None,
            error: None,
            deadline: None,
            not_before: None,
            boot_id: None,
        }
    }
}

const JOB_COLUMNS: &str = "j.id, j.organisation_id, j.kind, j.parameters, j.description, j.created_by, j.created_at, \
     j.state, j.finished_at, j.total, j.timeout_secs, j.expires_at, j.max_retries, j.retry_backoff_secs, \
     j.rollout_per_minute, j.abort_failure_ratio, j.abort_min_finished, j.started";
const EXECUTION_COLUMNS: &str = "e.id, e.job_id, e.device_id, d.name AS device_name, d.mac AS device_mac, \
     j.organisation_id, j.kind, e.state, e.attempt, e.progress, e.message, e.result, e.error, e.queued_at, \
     e.sent_at, e.started_at, e.finished_at, e.deadline";
const OPEN_COLUMNS: &str = "e.id, e.job_id, e.device_id, j.organisation_id, j.kind, e.state, e.attempt, e.deadline, \
     e.boot_id, j.max_retries, j.retry_backoff_secs, j.expires_at, j.timeout_secs";
/// Rows per multi-row statement: well under either database's bind limit.
const CHUNK: usize = 500;

fn in_list(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Store {
    /// Rows of `sql` (its `IN (…)` list given the placeholders) for every id,
    /// in chunks under either database's bind limit.
    pub(crate) async fn rows_for_ids<T>(
        &self,
        ids: &[i64],
        sql: impl Fn(&str) -> String,
    ) -> Result<Vec<T>, StoreError>
    where
        T: Send
            + Unpin
            + for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
            + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
    {
        let mut out = Vec::new();
        for chunk in ids.chunks(CHUNK) {
            let sql = sql(&in_list(1, chunk.len()));
            let rows: Vec<T> = with_pool!(self, pool => {
                let mut q = sqlx::query_as(&sql);
                for id in chunk {
                    q = q.bind(*id);
                }
                q.fetch_all(pool).await?
            });
            out.extend(rows);
        }
        Ok(out)
    }

    /// Creates a job and one queued execution per device; every device must
    /// be inside `scope`.
    pub async fn create_task_job(
        &self,
        scope: &Scope,
        job: &NewTaskJob,
    ) -> Result<TaskJob, StoreError> {
        let organisation = self.organisation(scope, job.organisation_id).await?;
        let mut ids = job.device_ids.clone();
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return Err(StoreError::Invalid("the job names no device".into()));
        }
        let now = now_millis();
        let job_scope = self.scope_of(organisation.id).await?;
        let id = with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            // Devices outside the job's organisation are not found, the same
            // answer as for devices that do not exist.
            let mut found = 0usize;
            for chunk in ids.chunks(CHUNK) {
                let sql = format!(
                    "SELECT COUNT(*) FROM devices d JOIN organisations o ON o.id = d.organisation_id \
                     WHERE o.path LIKE $1 AND d.id IN ({})",
                    in_list(2, chunk.len())
                );
                let mut q = sqlx::query_scalar::<_, i64>(&sql).bind(job_scope.pattern());
                for id in chunk {
                    q = q.bind(*id);
                }
                found += q.fetch_one(&mut *tx).await? as usize;
            }
            if found != ids.len() {
                return Err(StoreError::NotFound(format!(
                    "{} of the devices",
                    ids.len() - found
                )));
            }
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO task_jobs (organisation_id, kind, parameters, description, created_by, created_at, state, \
                 total, timeout_secs, expires_at, max_retries, retry_backoff_secs, rollout_per_minute, \
                 abort_failure_ratio, abort_min_finished, started) \
                 VALUES ($1, $2, $3, $4, $5, $6, 'running', $7, $8, $9, $10, $11, $12, $13, $14, 0) RETURNING id",
            )
            .bind(job.organisation_id)
            .bind(&job.kind)
            .bind(&job.parameters)
            .bind(&job.description)
            .bind(&job.created_by)
            .bind(now)
            .bind(ids.len() as i64)
            .bind(job.timeout_secs)
            .bind(job.expires_at)
            .bind(job.max_retries)
            .bind(job.retry_backoff_secs)
            .bind(job.rollout_per_minute)
            .bind(job.abort_failure_ratio)
            .bind(job.abort_min_finished)
            .fetch_one(&mut *tx)
            .await?;
            for chunk in ids.chunks(CHUNK) {
                let mut q = sqlx::QueryBuilder::new(
                    "INSERT INTO task_executions (job_id, device_id, state, attempt, queued_at, not_before, deadline) ",
                );
                q.push_values(chunk, |mut row, device| {
                    row.push_bind(id)
                        .push_bind(*device)
                        .push("'queued'")
                        .push("0")
                        .push_bind(now)
                        .push_bind(now)
                        .push_bind(job.expires_at);
                });
                q.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            id
        });
        self.task_job(scope, id).await
    }

    pub async fn task_job(&self, scope: &Scope, id: i64) -> Result<TaskJob, StoreError> {
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM task_jobs j JOIN organisations o ON o.id = j.organisation_id \
             WHERE j.id = $1 AND o.path LIKE $2"
        );
        let job = with_pool!(self, pool => {
            sqlx::query_as::<_, TaskJob>(&sql)
                .bind(id)
                .bind(scope.pattern())
                .fetch_optional(pool)
                .await?
        });
        job.ok_or_else(|| StoreError::NotFound(format!("job {id}")))
    }

    /// Jobs in `scope`, newest first.
    pub async fn task_jobs(
        &self,
        scope: &Scope,
        query: &JobQuery,
    ) -> Result<Vec<TaskJob>, StoreError> {
        let limit = i64::from(query.limit.clamp(1, 500));
        with_pool!(self, pool => {
            let mut q = sqlx::QueryBuilder::new(format!(
                "SELECT {JOB_COLUMNS} FROM task_jobs j JOIN organisations o ON o.id = j.organisation_id WHERE o.path LIKE "
            ));
            q.push_bind(scope.pattern());
            if let Some(state) = &query.state {
                q.push(" AND j.state = ").push_bind(state.clone());
            }
            if let Some(before) = query.before_id {
                q.push(" AND j.id < ").push_bind(before);
            }
            q.push(" ORDER BY j.id DESC LIMIT ").push_bind(limit);
            Ok(q.build_query_as().fetch_all(pool).await?)
        })
    }

    /// Executions per state of each job.
    pub async fn execution_counts(
        &self,
        job_ids: &[i64],
    ) -> Result<HashMap<i64, ExecutionCounts>, StoreError> {
        let rows: Vec<(i64, String, i64)> = self
            .rows_for_ids(job_ids, |ids| {
                format!("SELECT job_id, state, COUNT(*) FROM task_executions WHERE job_id IN ({ids}) GROUP BY job_id, state")
            })
            .await?;
        let mut out: HashMap<i64, ExecutionCounts> = HashMap::new();
        for (job, state, count) in rows {
            out.entry(job).or_default().by_state.insert(state, count);
        }
        Ok(out)
    }

    /// Executions in `scope`, newest first.
    pub async fn task_executions(
        &self,
        scope: &Scope,
        query: &ExecutionQuery,
    ) -> Result<Vec<TaskExecution>, StoreError> {
        let limit = i64::from(query.limit.clamp(1, 1000));
        with_pool!(self, pool => {
            let mut q = sqlx::QueryBuilder::new(format!(
                "SELECT {EXECUTION_COLUMNS} FROM task_executions e JOIN task_jobs j ON j.id = e.job_id \
                 JOIN devices d ON d.id = e.device_id JOIN organisations o ON o.id = d.organisation_id \
                 WHERE o.path LIKE "
            ));
            q.push_bind(scope.pattern());
            if let Some(job) = query.job_id {
                q.push(" AND e.job_id = ").push_bind(job);
            }
            if let Some(device) = query.device_id {
                q.push(" AND e.device_id = ").push_bind(device);
            }
            if let Some(state) = &query.state {
                q.push(" AND e.state = ").push_bind(state.clone());
            }
            if let Some(before) = query.before_id {
                q.push(" AND e.id < ").push_bind(before);
            }
            q.push(" ORDER BY e.id DESC LIMIT ").push_bind(limit);
            Ok(q.build_query_as().fetch_all(pool).await?)
        })
    }

    pub async fn task_execution(
        &self,
        scope: &Scope,
        id: i64,
    ) -> Result<TaskExecution, StoreError> {
        let sql = format!(
            "SELECT {EXECUTION_COLUMNS} FROM task_executions e JOIN task_jobs j ON j.id = e.job_id \
             JOIN devices d ON d.id = e.device_id JOIN organisations o ON o.id = d.organisation_id \
             WHERE e.id = $1 AND o.path LIKE $2"
        );
        let found = with_pool!(self, pool => {
            sqlx::query_as::<_, TaskExecution>(&sql)
                .bind(id)
                .bind(scope.pattern())
                .fetch_optional(pool)
                .await?
        });
        found.ok_or_else(|| StoreError::NotFound(format!("execution {id}")))
    }

    /// Running jobs with executions waiting to be sent now to devices
    /// online (at `instance`, when given: the platform instance whose
    /// embedded broker holds the device's connection).
    pub async fn jobs_with_due_executions(
        &self,
        now: i64,
        instance: Option<&str>,
    ) -> Result<Vec<i64>, StoreError> {
        with_pool!(self, pool => {
            Ok(sqlx::query_scalar(
                "SELECT j.id FROM task_jobs j WHERE j.state = 'running' AND EXISTS (\
                 SELECT 1 FROM task_executions e JOIN devices d ON d.id = e.device_id \
                 WHERE e.job_id = j.id AND e.state = 'queued' AND e.not_before <= $1 AND e.deadline > $1 AND d.online \
                 AND ($2 IS NULL OR d.online_instance = $2)) \
                 ORDER BY j.id",
            )
            .bind(now)
            .bind(instance)
            .fetch_all(pool)
            .await?)
        })
    }

    /// Claims up to `max` queued executions of `job` whose devices are
    /// online, within the job's rollout rate, marking them `sent` with a new
    /// attempt and deadline. Rows another instance holds are skipped
    /// (PostgreSQL `FOR UPDATE SKIP LOCKED`; SQLite has one writer), so each
    /// attempt is claimed by one instance.
    pub async fn claim_executions(
        &self,
        job_id: i64,
        now: i64,
        max: usize,
        instance: Option<&str>,
    ) -> Result<Vec<ClaimedExecution>, StoreError> {
        let lock = match &self.pool {
            Pool::Sqlite(_) => "",
            Pool::Postgres(_) => " FOR UPDATE SKIP LOCKED",
        };
        let lock_executions = match &self.pool {
            Pool::Sqlite(_) => "",
            Pool::Postgres(_) => " FOR UPDATE OF e SKIP LOCKED",
        };
        let job_sql = format!(
            "SELECT started, rollout_per_minute, created_at, timeout_secs, kind, parameters FROM task_jobs \
             WHERE id = $1 AND state = 'running'{lock}"
        );
        let claim_sql = format!(
            "UPDATE task_executions SET state = 'sent', attempt = attempt + 1, sent_at = $1, deadline = $2, \
             progress = NULL, message = NULL, error = NULL \
             WHERE state = 'queued' AND id IN (SELECT e.id FROM task_executions e JOIN devices d ON d.id = e.device_id \
             WHERE e.job_id = $3 AND e.state = 'queued' AND e.not_before <= $1 AND e.deadline > $1 AND d.online \
             AND ($5 IS NULL OR d.online_instance = $5) \
             ORDER BY e.id LIMIT $4{lock_executions}) \
             RETURNING id, device_id, attempt, deadline"
        );
        with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let job: Option<(i64, Option<i64>, i64, i64, String, String)> = sqlx::query_as(&job_sql)
                .bind(job_id)
                .fetch_optional(&mut *tx)
                .await?;
            let Some((started, rate, created_at, timeout_secs, kind, parameters)) = job else {
                return Ok(Vec::new());
            };
            // A rate of r a minute allows r in the first minute, 2r by the
            // end of the second, and so on.
            let budget = match rate {
                Some(rate) => {
                    let minutes = (now - created_at).max(0) / 60_000 + 1;
                    (rate.saturating_mul(minutes) - started).max(0) as usize
                }
                None => max,
            }
            .min(max);
            if budget == 0 {
                return Ok(Vec::new());
            }
            let claimed: Vec<(i64, i64, i64, i64)> = sqlx::query_as(&claim_sql)
                .bind(now)
                .bind(now + timeout_secs * 1000)
                .bind(job_id)
                .bind(budget as i64)
                .bind(instance)
                .fetch_all(&mut *tx)
                .await?;
            if claimed.is_empty() {
                return Ok(Vec::new());
            }
            sqlx::query("UPDATE task_jobs SET started = started + $1 WHERE id = $2")
                .bind(claimed.len() as i64)
                .bind(job_id)
                .execute(&mut *tx)
                .await?;
            let mut addresses: HashMap<i64, (String, String)> = HashMap::new();
            for chunk in claimed.chunks(CHUNK) {
                let sql = format!(
                    "SELECT d.id, d.mac, m.topic_segment FROM devices d JOIN device_models m ON m.id = d.model_id \
                     WHERE d.id IN ({})",
                    in_list(1, chunk.len())
                );
                let mut q = sqlx::query_as::<_, (i64, String, String)>(&sql);
                for row in chunk {
                    q = q.bind(row.1);
                }
                for (id, mac, segment) in q.fetch_all(&mut *tx).await? {
                    addresses.insert(id, (mac, segment));
                }
            }
            tx.commit().await?;
            Ok(claimed
                .into_iter()
                .filter_map(|(id, device_id, attempt, deadline)| {
                    let (mac, topic_segment) = addresses.get(&device_id)?.clone();
                    Some(ClaimedExecution {
                        id,
                        job_id,
                        device_id,
                        attempt,
                        deadline,
                        kind: kind.clone(),
                        parameters: parameters.clone(),
                        mac,
                        topic_segment,
                    })
                })
                .collect())
        })
    }

    /// The open executions among `ids`.
    pub async fn open_executions(&self, ids: &[i64]) -> Result<Vec<OpenExecution>, StoreError> {
        self.rows_for_ids(ids, |ids| {
            format!(
                "SELECT {OPEN_COLUMNS} FROM task_executions e JOIN task_jobs j ON j.id = e.job_id \
                 WHERE e.id IN ({ids}) AND e.state IN ('queued', 'sent', 'in_progress')"
            )
        })
        .await
    }

    /// Open executions whose deadline passed before `now` (at most `limit`).
    pub async fn overdue_executions(
        &self,
        now: i64,
        limit: u32,
    ) -> Result<Vec<OpenExecution>, StoreError> {
        let sql = format!(
            "SELECT {OPEN_COLUMNS} FROM task_executions e JOIN task_jobs j ON j.id = e.job_id \
             WHERE e.state IN ('queued', 'sent', 'in_progress') AND e.deadline < $1 ORDER BY e.deadline LIMIT $2"
        );
        with_pool!(self, pool => {
            Ok(sqlx::query_as(&sql).bind(now).bind(i64::from(limit)).fetch_all(pool).await?)
        })
    }

    /// The reboots of these devices waiting for them to come back.
    pub async fn pending_reboots(&self, devices: &[i64]) -> Result<Vec<OpenExecution>, StoreError> {
        self.rows_for_ids(devices, |ids| {
            format!(
                "SELECT {OPEN_COLUMNS} FROM task_executions e JOIN task_jobs j ON j.id = e.job_id \
                 WHERE e.device_id IN ({ids}) AND j.kind = 'reboot' AND e.state IN ('sent', 'in_progress')"
            )
        })
        .await
    }

    /// Open executions of a job (to cancel them).
    pub async fn open_executions_of_job(
        &self,
        job_id: i64,
        states: &[&str],
    ) -> Result<Vec<OpenExecution>, StoreError> {
        let sql = format!(
            "SELECT {OPEN_COLUMNS} FROM task_executions e JOIN task_jobs j ON j.id = e.job_id \
             WHERE e.job_id = $1 AND e.state IN ({})",
            in_list(2, states.len())
        );
        with_pool!(self, pool => {
            let mut q = sqlx::query_as(&sql).bind(job_id);
            for s in states {
                q = q.bind(*s);
            }
            Ok(q.fetch_all(pool).await?)
        })
    }

    /// Applies changes in one transaction; each only if its execution is
    /// still where it was decided from. Returns the ids changed.
    pub async fn apply_execution_changes(
        &self,
        changes: &[ExecutionChange],
    ) -> Result<Vec<i64>, StoreError> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_millis();
        with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let mut applied = Vec::new();
            for c in changes {
                let finished = FINAL_STATES.contains(&c.state.as_str());
                let started = c.state == "in_progress";
                let done = sqlx::query(
                    "UPDATE task_executions SET state = $1, \
                     progress = COALESCE($2, progress), message = COALESCE($3, message), \
                     result = COALESCE($4, result), error = COALESCE($5, error), \
                     deadline = COALESCE($6, deadline), not_before = COALESCE($7, not_before), \
                     boot_id = COALESCE($8, boot_id), \
                     started_at = CASE WHEN $9 THEN COALESCE(started_at, $10) ELSE started_at END, \
                     finished_at = CASE WHEN $11 THEN $10 ELSE finished_at END \
                     WHERE id = $12 AND state = $13 AND attempt = $14",
                )
                .bind(&c.state)
                .bind(c.progress)
                .bind(&c.message)
                .bind(&c.result)
                .bind(&c.error)
                .bind(c.deadline)
                .bind(c.not_before)
                .bind(&c.boot_id)
                .bind(started)
                .bind(now)
                .bind(finished)
                .bind(c.id)
                .bind(&c.from_state)
                .bind(c.from_attempt)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if done == 1 {
                    applied.push(c.id);
                }
            }
            tx.commit().await?;
            Ok(applied)
        })
    }

    /// Jobs among `ids` that still have a `finished_at` to be given.
    pub async fn unfinished_jobs(&self, ids: &[i64]) -> Result<Vec<TaskJob>, StoreError> {
        self.rows_for_ids(ids, |ids| {
            format!("SELECT {JOB_COLUMNS} FROM task_jobs j WHERE j.finished_at IS NULL AND j.id IN ({ids})")
        })
        .await
    }

    /// Stops a running job from sending more (`cancelled`, `aborted`); its
    /// executions already out keep their deadlines. False when it was not
    /// running.
    pub async fn stop_task_job(&self, job_id: i64, state: &str) -> Result<bool, StoreError> {
        with_pool!(self, pool => {
            let done = sqlx::query("UPDATE task_jobs SET state = $1 WHERE id = $2 AND state = 'running'")
                .bind(state)
                .bind(job_id)
                .execute(pool)
                .await?
                .rows_affected();
            Ok(done == 1)
        })
    }

    /// Closes a job whose executions are all final: a running job becomes
    /// `finished`, a stopped one keeps its state; both get `finished_at`.
    pub async fn close_task_job(&self, job_id: i64) -> Result<bool, StoreError> {
        let now = now_millis();
        with_pool!(self, pool => {
            let done = sqlx::query(
                "UPDATE task_jobs SET state = CASE WHEN state = 'running' THEN 'finished' ELSE state END, \
                 finished_at = $1 WHERE id = $2 AND finished_at IS NULL",
            )
            .bind(now)
            .bind(job_id)
            .execute(pool)
            .await?
            .rows_affected();
            Ok(done == 1)
        })
    }

    /// Remembers the boot ids devices reported with `status` online.
    pub async fn set_devices_boot_ids(&self, boots: &[(i64, String)]) -> Result<(), StoreError> {
        if boots.is_empty() {
            return Ok(());
        }
        // In id order, as every batch update of devices: no deadlock.
        let mut boots = boots.to_vec();
        boots.sort_by_key(|(device, _)| *device);
        with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            for (device, boot_id) in &boots {
                sqlx::query("UPDATE devices SET boot_id = $1 WHERE id = $2")
                    .bind(boot_id)
                    .bind(*device)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }
}
