//! What the hawkBit DDI API needs: target and gateway tokens (kept as
//! SHA-256), the devices they open, polls and attributes, and a device's
//! firmware executions seen as DDI actions.

use crate::{BeginWrite, Store, StoreError, now_millis, with_pool};

/// A device as a DDI client reaches it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct DdiDevice {
    pub id: i64,
    pub mac: String,
    pub organisation_id: i64,
    pub model_id: i64,
    pub topic_segment: String,
    /// Its organisation's path: a gateway token covers its subtree.
    pub path: String,
    pub firmware_version: Option<String>,
}

/// A `firmware_update` execution as a DDI action.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct DdiAction {
    pub id: i64,
    pub job_id: i64,
    pub state: String,
    pub attempt: i64,
    pub deadline: i64,
    pub sent_at: Option<i64>,
    pub result: Option<String>,
    /// The job's parameters (a `FirmwareUpdate`).
    pub parameters: String,
}

const DEVICE_SELECT: &str = "SELECT d.id, d.mac, d.organisation_id, d.model_id, m.topic_segment, o.path, \
     d.firmware_version FROM devices d JOIN device_models m ON m.id = d.model_id \
     JOIN organisations o ON o.id = d.organisation_id";

const ACTION_SELECT: &str = "SELECT e.id, e.job_id, e.state, e.attempt, e.deadline, e.sent_at, e.result, \
     j.parameters FROM task_executions e JOIN task_jobs j ON j.id = e.job_id";

impl Store {
    /// Sets (or with None removes) a device's target token.
    pub async fn set_ddi_target_token(
        &self,
        device_id: i64,
        token_hash: Option<&str>,
    ) -> Result<(), StoreError> {
        let now = now_millis();
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO ddi_targets (device_id, token_hash, token_created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (device_id) DO UPDATE SET token_hash = $2, token_created_at = $3",
            )
            .bind(device_id)
            .bind(token_hash)
            .bind(now)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Sets (or with None removes) an organisation's gateway token.
    pub async fn set_ddi_gateway_token(
        &self,
        organisation_id: i64,
        token_hash: Option<&str>,
    ) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            match token_hash {
                Some(hash) => {
                    sqlx::query(
                        "INSERT INTO ddi_gateway_tokens (organisation_id, token_hash, created_at) VALUES ($1, $2, $3) \
                         ON CONFLICT (organisation_id) DO UPDATE SET token_hash = $2, created_at = $3",
                    )
                    .bind(organisation_id)
                    .bind(hash)
                    .bind(now_millis())
                    .execute(pool)
                    .await?;
                }
                None => {
                    sqlx::query("DELETE FROM ddi_gateway_tokens WHERE organisation_id = $1")
                        .bind(organisation_id)
                        .execute(pool)
                        .await?;
                }
            }
        });
        Ok(())
    }

    /// The device a target token belongs to.
    pub async fn ddi_device_by_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<DdiDevice>, StoreError> {
        let sql = format!(
            "{DEVICE_SELECT} JOIN ddi_targets t ON t.device_id = d.id WHERE t.token_hash = $1"
        );
        with_pool!(self, pool => {
            Ok(sqlx::query_as(&sql).bind(token_hash).fetch_optional(pool).await?)
        })
    }

    /// The organisation (id, path) a gateway token belongs to.
    pub async fn ddi_gateway(&self, token_hash: &str) -> Result<Option<(i64, String)>, StoreError> {
        with_pool!(self, pool => {
            Ok(sqlx::query_as(
                "SELECT o.id, o.path FROM ddi_gateway_tokens g JOIN organisations o ON o.id = g.organisation_id \
                 WHERE g.token_hash = $1",
            )
            .bind(token_hash)
            .fetch_optional(pool)
            .await?)
        })
    }

    /// A device by its MAC, as the controller id names it.
    pub async fn ddi_device_by_mac(&self, mac: &str) -> Result<Option<DdiDevice>, StoreError> {
        let sql = format!("{DEVICE_SELECT} WHERE d.mac = $1");
        with_pool!(self, pool => {
            Ok(sqlx::query_as(&sql).bind(mac).fetch_optional(pool).await?)
        })
    }

    /// Notes a poll: the device is alive.
    pub async fn ddi_polled(&self, device_id: i64) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO ddi_targets (device_id, last_poll_at) VALUES ($1, $2) \
                 ON CONFLICT (device_id) DO UPDATE SET last_poll_at = $2",
            )
            .bind(device_id)
            .bind(now_millis())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// The attributes a client sent (a JSON object); None before any.
    pub async fn ddi_attributes(&self, device_id: i64) -> Result<Option<String>, StoreError> {
        let found: Option<Option<String>> = with_pool!(self, pool => {
            sqlx::query_scalar("SELECT attributes FROM ddi_targets WHERE device_id = $1")
                .bind(device_id)
                .fetch_optional(pool)
                .await?
        });
        Ok(found.flatten())
    }

    pub async fn set_ddi_attributes(
        &self,
        device_id: i64,
        attributes: &str,
    ) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO ddi_targets (device_id, attributes) VALUES ($1, $2) \
                 ON CONFLICT (device_id) DO UPDATE SET attributes = $2",
            )
            .bind(device_id)
            .bind(attributes)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// The device's oldest firmware update that is due or under way.
    pub async fn ddi_open_action(
        &self,
        device_id: i64,
        now: i64,
    ) -> Result<Option<DdiAction>, StoreError> {
        let sql = format!(
            "{ACTION_SELECT} WHERE e.device_id = $1 AND j.kind = 'firmware_update' AND j.state = 'running' \
             AND ((e.state = 'queued' AND e.not_before <= $2 AND e.deadline > $2) \
             OR e.state IN ('sent', 'in_progress')) ORDER BY e.id LIMIT 1"
        );
        with_pool!(self, pool => {
            Ok(sqlx::query_as(&sql).bind(device_id).bind(now).fetch_optional(pool).await?)
        })
    }

    /// One of the device's firmware updates, in any state.
    pub async fn ddi_action(
        &self,
        device_id: i64,
        execution_id: i64,
    ) -> Result<Option<DdiAction>, StoreError> {
        let sql = format!(
            "{ACTION_SELECT} WHERE e.device_id = $1 AND e.id = $2 AND j.kind = 'firmware_update'"
        );
        with_pool!(self, pool => {
            Ok(sqlx::query_as(&sql).bind(device_id).bind(execution_id).fetch_optional(pool).await?)
        })
    }

    /// The last update the device ran to success (its installed base).
    pub async fn ddi_installed_action(
        &self,
        device_id: i64,
    ) -> Result<Option<DdiAction>, StoreError> {
        let sql = format!(
            "{ACTION_SELECT} WHERE e.device_id = $1 AND j.kind = 'firmware_update' \
             AND e.state = 'succeeded' ORDER BY e.id DESC LIMIT 1"
        );
        with_pool!(self, pool => {
            Ok(sqlx::query_as(&sql).bind(device_id).fetch_optional(pool).await?)
        })
    }

    /// An update cancelled after the device had it, whose cancellation the
    /// device has not acknowledged yet.
    pub async fn ddi_cancelled_action(&self, device_id: i64) -> Result<Option<i64>, StoreError> {
        with_pool!(self, pool => {
            Ok(sqlx::query_scalar(
                "SELECT e.id FROM task_executions e JOIN task_jobs j ON j.id = e.job_id \
                 LEFT JOIN ddi_targets t ON t.device_id = e.device_id \
                 WHERE e.device_id = $1 AND j.kind = 'firmware_update' AND e.state = 'cancelled' \
                 AND e.sent_at IS NOT NULL AND e.id > COALESCE(t.cancel_acked, 0) \
                 ORDER BY e.id DESC LIMIT 1",
            )
            .bind(device_id)
            .fetch_optional(pool)
            .await?)
        })
    }

    pub async fn ddi_cancel_acknowledged(
        &self,
        device_id: i64,
        execution_id: i64,
    ) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO ddi_targets (device_id, cancel_acked) VALUES ($1, $2) \
                 ON CONFLICT (device_id) DO UPDATE SET cancel_acked = $2",
            )
            .bind(device_id)
            .bind(execution_id)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Marks a queued execution delivered to a device that fetched it
    /// itself: a new attempt with its deadline from now. None when it was
    /// not queued (already delivered, or finished meanwhile).
    pub async fn ddi_deliver(
        &self,
        execution_id: i64,
        now: i64,
    ) -> Result<Option<i64>, StoreError> {
        with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let attempt: Option<i64> = sqlx::query_scalar(
                "UPDATE task_executions SET state = 'sent', attempt = attempt + 1, sent_at = $1, \
                 deadline = $1 + 1000 * (SELECT timeout_secs FROM task_jobs j WHERE j.id = task_executions.job_id), \
                 progress = NULL, message = NULL, error = NULL \
                 WHERE id = $2 AND state = 'queued' RETURNING attempt",
            )
            .bind(now)
            .bind(execution_id)
            .fetch_optional(&mut *tx)
            .await?;
            if attempt.is_some() {
                sqlx::query(
                    "UPDATE task_jobs SET started = started + 1 WHERE id = \
                     (SELECT job_id FROM task_executions WHERE id = $1)",
                )
                .bind(execution_id)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(attempt)
        })
    }
}
