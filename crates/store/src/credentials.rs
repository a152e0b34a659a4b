//! Device MQTT credentials and presence. The login lookup is the platform's
//! own (the broker asks it for every device CONNECT), so it takes no scope;
//! issuing credentials does.

use crate::BeginWrite;
use crate::{Scope, Store, StoreError, now_millis, with_pool};

/// What the broker's authenticator needs to know of a device.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DeviceLogin {
    pub device_id: i64,
    pub organisation_id: i64,
    pub mac: String,
    /// The model's topic level: the device's topics are `dwr/{topic_segment}/{mac}/…`.
    pub topic_segment: String,
    pub secret_sha256: Option<String>,
    pub certificate_sha256: Option<String>,
}

/// A device came or went.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PresenceChange {
    pub id: i64,
    pub online: bool,
    pub at: i64,
}

impl Store {
    /// Sets a device's secret digest (replacing the old one), if the device is in `scope`.
    pub async fn set_device_secret(
        &self,
        scope: &Scope,
        device_id: i64,
        secret_sha256: &str,
    ) -> Result<(), StoreError> {
        self.set_device_credential(scope, device_id, "secret_sha256", secret_sha256)
            .await
    }

    /// Sets the SHA-256 of the client certificate a device may connect with
    /// (replacing the old one), if the device is in `scope`.
    pub async fn set_device_certificate(
        &self,
        scope: &Scope,
        device_id: i64,
        certificate_sha256: &str,
    ) -> Result<(), StoreError> {
        self.set_device_credential(scope, device_id, "certificate_sha256", certificate_sha256)
            .await
    }

    /// Sets one credential column, keeping the other: a device may have a
    /// secret and a certificate at once.
    async fn set_device_credential(
        &self,
        scope: &Scope,
        device_id: i64,
        column: &'static str,
        digest: &str,
    ) -> Result<(), StoreError> {
        self.device(scope, device_id).await?;
        let now = now_millis();
        let sql = format!(
            "INSERT INTO device_credentials (device_id, {column}, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (device_id) DO UPDATE SET {column} = excluded.{column}, created_at = excluded.created_at"
        );
        with_pool!(self, pool => {
            sqlx::query(&sql)
                .bind(device_id)
                .bind(digest)
                .bind(now)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// The device whose MQTT user name (its MAC) is `mac`.
    pub async fn device_login(&self, mac: &str) -> Result<Option<DeviceLogin>, StoreError> {
        let row = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT d.id AS device_id, d.organisation_id, d.mac, m.topic_segment, c.secret_sha256, c.certificate_sha256 \
                 FROM devices d JOIN device_models m ON m.id = d.model_id \
                 LEFT JOIN device_credentials c ON c.device_id = d.id WHERE d.mac = $1",
            )
            .bind(mac)
            .fetch_optional(pool)
            .await?
        });
        Ok(row)
    }

    /// Records a device going online or offline.
    pub async fn set_device_online(
        &self,
        device_id: i64,
        online: bool,
        instance: &str,
    ) -> Result<(), StoreError> {
        self.set_devices_online(&[(device_id, online)], instance)
            .await
    }

    /// Records connects (true) and disconnects (false) seen by `instance`,
    /// in one transaction: a fleet reconnecting after a broker restart is
    /// thousands of them within a second.
    /// A disconnect counts only if `instance` holds the device's
    /// connection: after a device moved to another instance, the old
    /// instance's late disconnect does not mark it offline.
    pub async fn set_devices_online(
        &self,
        changes: &[(i64, bool)],
        instance: &str,
    ) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let now = now_millis();
        // Rows locked in id order, as every batch update of devices does:
        // two transactions never wait on each other in a cycle (PostgreSQL
        // deadlock). Stable, so one device's changes keep their order.
        let mut changes = changes.to_vec();
        changes.sort_by_key(|(device, _)| *device);
        with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            for (device_id, online) in &changes {
                let changed = if *online {
                    sqlx::query("UPDATE devices SET online = $1, last_seen_at = $2, online_instance = $3 WHERE id = $4")
                        .bind(true)
                        .bind(now)
                        .bind(instance)
                        .bind(device_id)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected()
                } else {
                    sqlx::query("UPDATE devices SET online = $1, last_seen_at = $2 WHERE id = $3 AND (online_instance = $4 OR online_instance IS NULL)")
                        .bind(false)
                        .bind(now)
                        .bind(device_id)
                        .bind(instance)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected()
                };
                if changed > 0 {
                    sqlx::query("INSERT INTO device_presence (device_id, online, at) VALUES ($1, $2, $3)")
                        .bind(device_id)
                        .bind(online)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Marks the devices `instance` held online as gone, with a presence
    /// change each; returns how many. For a platform starting its embedded
    /// broker: nobody is connected to a broker that just started, and
    /// disconnects during the last shutdown may not have been written.
    /// Devices another instance holds are left alone.
    pub async fn mark_all_offline(&self, instance: &str) -> Result<u64, StoreError> {
        let now = now_millis();
        let n = with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query("INSERT INTO device_presence (device_id, online, at) SELECT id, $1, $2 FROM devices WHERE online = $3 AND (online_instance = $4 OR online_instance IS NULL)")
                .bind(false)
                .bind(now)
                .bind(true)
                .bind(instance)
                .execute(&mut *tx)
                .await?;
            let n = sqlx::query("UPDATE devices SET online = $1 WHERE online = $2 AND (online_instance = $3 OR online_instance IS NULL)")
                .bind(false)
                .bind(true)
                .bind(instance)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            n
        });
        Ok(n)
    }

    /// A device's connects and disconnects, newest first.
    pub async fn presence_history(
        &self,
        scope: &Scope,
        device_id: i64,
        before_id: Option<i64>,
        limit: u32,
    ) -> Result<Vec<PresenceChange>, StoreError> {
        self.device(scope, device_id).await?;
        let rows = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT id, online, at FROM device_presence WHERE device_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
            )
            .bind(device_id)
            .bind(before_id.unwrap_or(i64::MAX))
            .bind(i64::from(limit.clamp(1, 1000)))
            .fetch_all(pool)
            .await?
        });
        Ok(rows)
    }

    /// Devices online in `scope`.
    pub async fn count_online_devices(&self, scope: &Scope) -> Result<i64, StoreError> {
        let n: i64 = with_pool!(self, pool => {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM devices d JOIN organisations o ON o.id = d.organisation_id \
                 WHERE o.path LIKE $1 AND d.online = $2",
            )
            .bind(scope.pattern())
            .bind(true)
            .fetch_one(pool)
            .await?
        });
        Ok(n)
    }
}
