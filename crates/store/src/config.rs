//! Device configuration: the version and document a device should run
//! (the latest configure job that named it) beside the version it reported
//! applying, so drift shows.

use crate::{BeginWrite, Scope, Store, StoreError, now_millis, with_pool};

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DeviceConfig {
    pub device_id: i64,
    pub desired_version: Option<i64>,
    /// JSON.
    pub desired_document: Option<String>,
    pub desired_job: Option<i64>,
    pub desired_at: Option<i64>,
    pub reported_version: Option<i64>,
    pub reported_state: Option<String>,
    pub reported_at: Option<i64>,
}

impl Store {
    /// Records what a configure job wants of each of its devices.
    pub async fn set_desired_config(
        &self,
        devices: &[i64],
        version: i64,
        document: &str,
        job_id: i64,
    ) -> Result<(), StoreError> {
        let now = now_millis();
        let mut devices = devices.to_vec();
        devices.sort_unstable();
        devices.dedup();
        with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            for chunk in devices.chunks(500) {
                let mut q = sqlx::QueryBuilder::new(
                    "INSERT INTO device_config (device_id, desired_version, desired_document, desired_job, desired_at) ",
                );
                q.push_values(chunk, |mut row, device| {
                    row.push_bind(*device)
                        .push_bind(version)
                        .push_bind(document.to_owned())
                        .push_bind(job_id)
                        .push_bind(now);
                });
                q.push(
                    " ON CONFLICT (device_id) DO UPDATE SET desired_version = excluded.desired_version, \
                     desired_document = excluded.desired_document, desired_job = excluded.desired_job, \
                     desired_at = excluded.desired_at",
                );
                q.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// What a device reported of a configuration: applied at `version`, or
    /// a failure (`version` None keeps the last applied one).
    pub async fn set_reported_config(
        &self,
        device_id: i64,
        version: Option<i64>,
        state: &str,
    ) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO device_config (device_id, reported_version, reported_state, reported_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (device_id) DO UPDATE SET reported_version = COALESCE(excluded.reported_version, device_config.reported_version), \
                 reported_state = excluded.reported_state, reported_at = excluded.reported_at",
            )
            .bind(device_id)
            .bind(version)
            .bind(state)
            .bind(now_millis())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    pub async fn device_config(
        &self,
        scope: &Scope,
        device_id: i64,
    ) -> Result<Option<DeviceConfig>, StoreError> {
        self.device(scope, device_id).await?;
        with_pool!(self, pool => {
            Ok(sqlx::query_as(
                "SELECT device_id, desired_version, desired_document, desired_job, desired_at, reported_version, \
                 reported_state, reported_at FROM device_config WHERE device_id = $1",
            )
            .bind(device_id)
            .fetch_optional(pool)
            .await?)
        })
    }
}
