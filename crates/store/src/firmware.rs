//! The firmware repository and campaigns.
//!
//! An image belongs to an organisation and is visible inside it and below
//! it, and to every organisation below the one that owns it (an operator's
//! image is offered to all). A campaign's devices are fixed at its start,
//! each with its wave and its own state, changed only conditionally on the
//! state it was decided from (several instances may look at one campaign).

use crate::{BeginWrite, Scope, Store, StoreError, now_millis, with_pool};

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct FirmwareImage {
    pub id: i64,
    pub organisation_id: i64,
    pub version: String,
    pub min_version: Option<String>,
    pub notes: String,
    pub file_name: String,
    pub size: i64,
    pub sha256: String,
    pub sha1: String,
    pub md5: String,
    pub signature: String,
    pub signed_by: String,
    pub created_by: String,
    pub created_at: i64,
    /// The models it is for.
    #[sqlx(skip)]
    pub model_ids: Vec<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewFirmwareImage {
    pub organisation_id: i64,
    pub version: String,
    pub min_version: Option<String>,
    pub notes: String,
    pub file_name: String,
    pub size: i64,
    pub sha256: String,
    pub sha1: String,
    pub md5: String,
    pub signature: String,
    pub signed_by: String,
    pub created_by: String,
    pub model_ids: Vec<i64>,
}

const IMAGE_COLUMNS: &str = "i.id, i.organisation_id, i.version, i.min_version, i.notes, i.file_name, i.size, \
     i.sha256, i.sha1, i.md5, i.signature, i.signed_by, i.created_by, i.created_at";

/// Images the scope may use: its own subtree's and its ancestors'.
const VISIBLE: &str = "(o.path LIKE $1 OR $2 LIKE o.path || '%')";

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct FirmwareCampaign {
    pub id: i64,
    pub organisation_id: i64,
    pub name: String,
    pub image_id: i64,
    pub model_id: i64,
    pub filter: String,
    /// `running`, `paused`, `aborted` or `finished`.
    pub state: String,
    pub state_reason: Option<String>,
    pub current_wave: i64,
    pub failure_threshold: f64,
    pub min_finished: i64,
    /// `pause` or `abort`.
    pub on_threshold: String,
    pub health_secs: i64,
    pub rollback_unhealthy: bool,
    pub window_start: Option<i64>,
    pub window_end: Option<i64>,
    pub time_zone: String,
    pub device_timeout_secs: i64,
    pub device_wait_secs: i64,
    pub max_bytes_per_sec: i64,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// When nothing of it was in flight any more.
    pub finished_at: Option<i64>,
    /// Failed and finished devices when a user last resumed it: the
    /// threshold counts those after.
    pub accepted_failed: i64,
    pub accepted_finished: i64,
    /// The wave a resume let past its success ratio; -1 for none.
    pub accepted_wave: i64,
}

const CAMPAIGN_COLUMNS: &str = "c.id, c.organisation_id, c.name, c.image_id, c.model_id, c.filter, c.state, \
     c.state_reason, c.current_wave, c.failure_threshold, c.min_finished, c.on_threshold, c.health_secs, \
     c.rollback_unhealthy, c.window_start, c.window_end, c.time_zone, c.device_timeout_secs, \
     c.device_wait_secs, c.max_bytes_per_sec, c.created_by, c.created_at, c.updated_at, c.finished_at, \
     c.accepted_failed, c.accepted_finished, c.accepted_wave";

/// A campaign as it is made; `waves` hold its devices.
#[derive(Debug, Clone, PartialEq)]
pub struct NewCampaign {
    pub organisation_id: i64,
    pub name: String,
    pub image_id: i64,
    pub model_id: i64,
    pub filter: String,
    pub failure_threshold: f64,
    pub min_finished: i64,
    pub on_threshold: String,
    pub health_secs: i64,
    pub rollback_unhealthy: bool,
    pub window_start: Option<i64>,
    pub window_end: Option<i64>,
    pub time_zone: String,
    pub device_timeout_secs: i64,
    pub device_wait_secs: i64,
    pub max_bytes_per_sec: i64,
    pub created_by: String,
    pub waves: Vec<NewWave>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewWave {
    pub success_ratio: f64,
    pub soak_secs: i64,
    /// Each device with the version it runs now.
    pub devices: Vec<(i64, Option<String>)>,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct CampaignWave {
    pub campaign_id: i64,
    pub number: i64,
    pub size: i64,
    pub success_ratio: f64,
    pub soak_secs: i64,
    /// `waiting`, `running`, `soaking` or `done`.
    pub state: String,
    pub started_at: Option<i64>,
    pub settled_at: Option<i64>,
    pub done_at: Option<i64>,
}

/// Device states a campaign leaves only by a rule.
pub const CAMPAIGN_OPEN_STATES: [&str; 4] = ["pending", "active", "watching", "rolling_back"];
/// Device states that count as finished (skipped is neither success nor
/// failure: the device was never reached).
pub const CAMPAIGN_FINAL_STATES: [&str; 4] = ["succeeded", "failed", "rolled_back", "skipped"];

/// One device of a campaign with its current execution.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct CampaignDevice {
    pub campaign_id: i64,
    pub device_id: i64,
    pub device_name: String,
    pub device_mac: String,
    pub wave: i64,
    pub state: String,
    pub execution_id: Option<i64>,
    pub from_version: Option<String>,
    pub reason: Option<String>,
    pub watch_from: Option<i64>,
    pub watch_until: Option<i64>,
    pub boot_id: Option<String>,
    pub updated_at: i64,
    pub execution_kind: Option<String>,
    pub execution_state: Option<String>,
    pub execution_progress: Option<i64>,
    pub execution_result: Option<String>,
    pub execution_error: Option<String>,
    pub execution_message: Option<String>,
    pub execution_sent_at: Option<i64>,
    /// The device's boot now.
    pub device_boot_id: Option<String>,
}

const DEVICE_COLUMNS: &str = "cd.campaign_id, cd.device_id, d.name AS device_name, d.mac AS device_mac, cd.wave, \
     cd.state, cd.execution_id, cd.from_version, cd.reason, cd.watch_from, cd.watch_until, cd.boot_id, cd.updated_at, \
     j.kind AS execution_kind, e.state AS execution_state, e.progress AS execution_progress, \
     e.result AS execution_result, e.error AS execution_error, e.message AS execution_message, \
     e.sent_at AS execution_sent_at, d.boot_id AS device_boot_id";
const DEVICE_FROM: &str = "campaign_devices cd JOIN devices d ON d.id = cd.device_id \
     LEFT JOIN task_executions e ON e.id = cd.execution_id LEFT JOIN task_jobs j ON j.id = e.job_id";

/// A change to one campaign device, applied only if it is still in
/// `from_state`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CampaignDeviceChange {
    pub device_id: i64,
    pub from_state: String,
    pub state: String,
    pub reason: Option<String>,
    /// Some(None) clears the execution.
    pub execution_id: Option<Option<i64>>,
    pub watch_from: Option<i64>,
    pub watch_until: Option<i64>,
    pub boot_id: Option<String>,
}

/// What the health gate looks at for a watched device.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct WatchedDevice {
    pub device_id: i64,
    pub watch_from: i64,
    pub watch_until: i64,
    /// The boot the device was on when it reported the new version.
    pub boot_id: Option<String>,
    pub current_boot_id: Option<String>,
    pub online: bool,
    pub firmware_version: Option<String>,
    /// 1 if a reading was stored since the watch began, else 0.
    pub readings_since: i64,
    /// Disconnects since the watch began.
    pub disconnects: i64,
    /// Alarms raised since the watch began.
    pub alarms: i64,
}

/// A device's part in one campaign, for its firmware history.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct FirmwareHistoryEntry {
    pub campaign_id: i64,
    pub campaign_name: String,
    pub image_id: i64,
    pub version: String,
    pub from_version: Option<String>,
    pub state: String,
    pub reason: Option<String>,
    pub updated_at: i64,
}

fn not_found(what: &str, id: i64) -> StoreError {
    StoreError::NotFound(format!("{what} {id}"))
}

impl Store {
    /// Records an uploaded image for its models. A model already having an
    /// image of this version is a conflict.
    pub async fn create_firmware_image(
        &self,
        scope: &Scope,
        image: &NewFirmwareImage,
    ) -> Result<FirmwareImage, StoreError> {
        self.organisation(scope, image.organisation_id).await?;
        let now = now_millis();
        let id = with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            for model in &image.model_ids {
                let known: Option<i64> = sqlx::query_scalar("SELECT id FROM device_models WHERE id = $1")
                    .bind(model)
                    .fetch_optional(&mut *tx)
                    .await?;
                if known.is_none() {
                    return Err(not_found("device model", *model));
                }
            }
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO firmware_images (organisation_id, version, min_version, notes, file_name, size, \
                 sha256, sha1, md5, signature, signed_by, created_by, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id",
            )
            .bind(image.organisation_id)
            .bind(&image.version)
            .bind(&image.min_version)
            .bind(&image.notes)
            .bind(&image.file_name)
            .bind(image.size)
            .bind(&image.sha256)
            .bind(&image.sha1)
            .bind(&image.md5)
            .bind(&image.signature)
            .bind(&image.signed_by)
            .bind(&image.created_by)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            for model in &image.model_ids {
                let inserted = sqlx::query(
                    "INSERT INTO firmware_image_models (image_id, model_id, version) VALUES ($1, $2, $3)",
                )
                .bind(id)
                .bind(model)
                .bind(&image.version)
                .execute(&mut *tx)
                .await;
                if let Err(e) = inserted {
                    return Err(match StoreError::from(e) {
                        StoreError::Conflict(_) => StoreError::Conflict(format!(
                            "version {} for device model {model}",
                            image.version
                        )),
                        other => other,
                    });
                }
            }
            tx.commit().await?;
            id
        });
        self.firmware_image(scope, id).await
    }

    async fn with_models(
        &self,
        mut images: Vec<FirmwareImage>,
    ) -> Result<Vec<FirmwareImage>, StoreError> {
        if images.is_empty() {
            return Ok(images);
        }
        let ids: Vec<i64> = images.iter().map(|i| i.id).collect();
        let pairs: Vec<(i64, i64)> = self
            .rows_for_ids(&ids, |list| {
                format!("SELECT image_id, model_id FROM firmware_image_models WHERE image_id IN ({list}) ORDER BY model_id")
            })
            .await?;
        for image in &mut images {
            image.model_ids = pairs
                .iter()
                .filter(|(i, _)| *i == image.id)
                .map(|(_, m)| *m)
                .collect();
        }
        Ok(images)
    }

    /// Images the scope may use, newest first.
    pub async fn firmware_images(
        &self,
        scope: &Scope,
        model_id: Option<i64>,
    ) -> Result<Vec<FirmwareImage>, StoreError> {
        let sql = format!(
            "SELECT {IMAGE_COLUMNS} FROM firmware_images i JOIN organisations o ON o.id = i.organisation_id \
             WHERE {VISIBLE} AND ($3 IS NULL OR i.id IN (SELECT image_id FROM firmware_image_models WHERE model_id = $3)) \
             ORDER BY i.id DESC LIMIT 1000"
        );
        let images = with_pool!(self, pool => {
            sqlx::query_as::<_, FirmwareImage>(&sql)
                .bind(scope.pattern())
                .bind(&scope.path)
                .bind(model_id)
                .fetch_all(pool)
                .await?
        });
        self.with_models(images).await
    }

    /// One image the scope may use.
    pub async fn firmware_image(
        &self,
        scope: &Scope,
        id: i64,
    ) -> Result<FirmwareImage, StoreError> {
        let sql = format!(
            "SELECT {IMAGE_COLUMNS} FROM firmware_images i JOIN organisations o ON o.id = i.organisation_id \
             WHERE {VISIBLE} AND i.id = $3"
        );
        let found = with_pool!(self, pool => {
            sqlx::query_as::<_, FirmwareImage>(&sql)
                .bind(scope.pattern())
                .bind(&scope.path)
                .bind(id)
                .fetch_optional(pool)
                .await?
        });
        let found = found.ok_or_else(|| not_found("firmware image", id))?;
        Ok(self.with_models(vec![found]).await?.remove(0))
    }

    /// An image whatever the scope: for a download whose token named it.
    pub async fn firmware_image_by_id(&self, id: i64) -> Result<FirmwareImage, StoreError> {
        let sql = format!("SELECT {IMAGE_COLUMNS} FROM firmware_images i WHERE i.id = $1");
        let found = with_pool!(self, pool => {
            sqlx::query_as::<_, FirmwareImage>(&sql).bind(id).fetch_optional(pool).await?
        });
        let found = found.ok_or_else(|| not_found("firmware image", id))?;
        Ok(self.with_models(vec![found]).await?.remove(0))
    }

    /// Deletes an image owned inside the scope that no campaign uses.
    /// Returns it, and whether another image still has the same bytes.
    pub async fn delete_firmware_image(
        &self,
        scope: &Scope,
        id: i64,
    ) -> Result<(FirmwareImage, bool), StoreError> {
        let image = self.firmware_image(scope, id).await?;
        self.organisation(scope, image.organisation_id)
            .await
            .map_err(|_| {
                StoreError::Invalid(format!(
                    "firmware image {id} belongs to an organisation above yours"
                ))
            })?;
        let shared = with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let used: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM firmware_campaigns WHERE image_id = $1")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
            if used > 0 {
                return Err(StoreError::Conflict(format!(
                    "a campaign naming firmware image {id}"
                )));
            }
            sqlx::query("DELETE FROM firmware_image_models WHERE image_id = $1").bind(id).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM firmware_images WHERE id = $1").bind(id).execute(&mut *tx).await?;
            let shared: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM firmware_images WHERE sha256 = $1")
                .bind(&image.sha256)
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            shared > 0
        });
        Ok((image, shared))
    }

    /// Whether any image has these bytes (a file without one is an orphan).
    pub async fn firmware_sha256_known(&self, sha256: &str) -> Result<bool, StoreError> {
        let n: i64 = with_pool!(self, pool => {
            sqlx::query_scalar("SELECT COUNT(*) FROM firmware_images WHERE sha256 = $1")
                .bind(sha256)
                .fetch_one(pool)
                .await?
        });
        Ok(n > 0)
    }

    /// Makes a campaign with its waves and devices. A device already in an
    /// unfinished campaign is a conflict.
    pub async fn create_campaign(
        &self,
        scope: &Scope,
        campaign: &NewCampaign,
    ) -> Result<FirmwareCampaign, StoreError> {
        self.organisation(scope, campaign.organisation_id).await?;
        let now = now_millis();
        let id = with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO firmware_campaigns (organisation_id, name, image_id, model_id, filter, state, \
                 current_wave, failure_threshold, min_finished, on_threshold, health_secs, rollback_unhealthy, \
                 window_start, window_end, time_zone, device_timeout_secs, device_wait_secs, max_bytes_per_sec, \
                 created_by, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, 'running', 0, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $18) \
                 RETURNING id",
            )
            .bind(campaign.organisation_id)
            .bind(&campaign.name)
            .bind(campaign.image_id)
            .bind(campaign.model_id)
            .bind(&campaign.filter)
            .bind(campaign.failure_threshold)
            .bind(campaign.min_finished)
            .bind(&campaign.on_threshold)
            .bind(campaign.health_secs)
            .bind(campaign.rollback_unhealthy)
            .bind(campaign.window_start)
            .bind(campaign.window_end)
            .bind(&campaign.time_zone)
            .bind(campaign.device_timeout_secs)
            .bind(campaign.device_wait_secs)
            .bind(campaign.max_bytes_per_sec)
            .bind(&campaign.created_by)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            for (number, wave) in campaign.waves.iter().enumerate() {
                sqlx::query(
                    "INSERT INTO campaign_waves (campaign_id, number, size, success_ratio, soak_secs, state) \
                     VALUES ($1, $2, $3, $4, $5, 'waiting')",
                )
                .bind(id)
                .bind(number as i64)
                .bind(wave.devices.len() as i64)
                .bind(wave.success_ratio)
                .bind(wave.soak_secs)
                .execute(&mut *tx)
                .await?;
                for chunk in wave.devices.chunks(500) {
                    let mut q = sqlx::QueryBuilder::new(
                        "INSERT INTO campaign_devices (campaign_id, device_id, wave, state, from_version, updated_at) ",
                    );
                    q.push_values(chunk, |mut row, (device, version)| {
                        row.push_bind(id)
                            .push_bind(*device)
                            .push_bind(number as i64)
                            .push("'pending'")
                            .push_bind(version.clone())
                            .push_bind(now);
                    });
                    q.build().execute(&mut *tx).await?;
                }
            }
            // One unfinished campaign per device: two would race to flash it.
            let busy: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM campaign_devices cd JOIN firmware_campaigns c ON c.id = cd.campaign_id \
                 WHERE cd.campaign_id <> $1 AND c.finished_at IS NULL \
                 AND cd.device_id IN (SELECT device_id FROM campaign_devices WHERE campaign_id = $1)",
            )
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
            if busy > 0 {
                return Err(StoreError::Conflict(format!(
                    "an unfinished campaign for {busy} of these devices"
                )));
            }
            tx.commit().await?;
            id
        });
        self.campaign(scope, id).await
    }

    /// Devices among `ids` that are in an unfinished campaign.
    pub async fn devices_in_open_campaigns(&self, ids: &[i64]) -> Result<Vec<i64>, StoreError> {
        let rows: Vec<(i64,)> = self
            .rows_for_ids(ids, |list| {
                format!(
                    "SELECT DISTINCT cd.device_id FROM campaign_devices cd JOIN firmware_campaigns c ON c.id = cd.campaign_id \
                     WHERE c.finished_at IS NULL AND cd.device_id IN ({list})"
                )
            })
            .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    pub async fn campaign(&self, scope: &Scope, id: i64) -> Result<FirmwareCampaign, StoreError> {
        let sql = format!(
            "SELECT {CAMPAIGN_COLUMNS} FROM firmware_campaigns c JOIN organisations o ON o.id = c.organisation_id \
             WHERE c.id = $1 AND o.path LIKE $2"
        );
        let found = with_pool!(self, pool => {
            sqlx::query_as::<_, FirmwareCampaign>(&sql).bind(id).bind(scope.pattern()).fetch_optional(pool).await?
        });
        found.ok_or_else(|| not_found("campaign", id))
    }

    /// The campaigns of the scope, newest first.
    pub async fn campaigns(&self, scope: &Scope) -> Result<Vec<FirmwareCampaign>, StoreError> {
        let sql = format!(
            "SELECT {CAMPAIGN_COLUMNS} FROM firmware_campaigns c JOIN organisations o ON o.id = c.organisation_id \
             WHERE o.path LIKE $1 ORDER BY c.id DESC LIMIT 500"
        );
        with_pool!(self, pool => {
            Ok(sqlx::query_as(&sql).bind(scope.pattern()).fetch_all(pool).await?)
        })
    }

    /// Campaigns with something still in flight, for the engine.
    pub async fn unfinished_campaigns(&self) -> Result<Vec<FirmwareCampaign>, StoreError> {
        let sql = format!(
            "SELECT {CAMPAIGN_COLUMNS} FROM firmware_campaigns c WHERE c.finished_at IS NULL ORDER BY c.id"
        );
        with_pool!(self, pool => {
            Ok(sqlx::query_as(&sql).fetch_all(pool).await?)
        })
    }

    pub async fn campaign_waves(&self, campaign_id: i64) -> Result<Vec<CampaignWave>, StoreError> {
        with_pool!(self, pool => {
            Ok(sqlx::query_as(
                "SELECT campaign_id, number, size, success_ratio, soak_secs, state, started_at, settled_at, done_at \
                 FROM campaign_waves WHERE campaign_id = $1 ORDER BY number",
            )
            .bind(campaign_id)
            .fetch_all(pool)
            .await?)
        })
    }

    /// Devices per wave and state.
    pub async fn campaign_counts(
        &self,
        campaign_id: i64,
    ) -> Result<Vec<(i64, String, i64)>, StoreError> {
        with_pool!(self, pool => {
            Ok(sqlx::query_as(
                "SELECT wave, state, COUNT(*) FROM campaign_devices WHERE campaign_id = $1 GROUP BY wave, state ORDER BY wave, state",
            )
            .bind(campaign_id)
            .fetch_all(pool)
            .await?)
        })
    }

    /// Devices that reached a final state, per time bucket of `bucket_ms`
    /// and state: (bucket start, state, count), in time order.
    pub async fn campaign_progress(
        &self,
        campaign_id: i64,
        bucket_ms: i64,
    ) -> Result<Vec<(i64, String, i64)>, StoreError> {
        let bucket_ms = bucket_ms.max(1);
        with_pool!(self, pool => {
            Ok(sqlx::query_as(
                "SELECT (updated_at / $2) * $2 AS bucket, state, COUNT(*) FROM campaign_devices \
                 WHERE campaign_id = $1 AND state IN ('succeeded', 'failed', 'rolled_back', 'skipped') \
                 GROUP BY bucket, state ORDER BY bucket, state",
            )
            .bind(campaign_id)
            .bind(bucket_ms)
            .fetch_all(pool)
            .await?)
        })
    }

    /// A page of a campaign's devices, in device id order after `after`.
    pub async fn campaign_devices(
        &self,
        campaign_id: i64,
        wave: Option<i64>,
        state: Option<&str>,
        after: Option<i64>,
        limit: i64,
    ) -> Result<Vec<CampaignDevice>, StoreError> {
        let sql = format!(
            "SELECT {DEVICE_COLUMNS} FROM {DEVICE_FROM} WHERE cd.campaign_id = $1 \
             AND ($2 IS NULL OR cd.wave = $2) AND ($3 IS NULL OR cd.state = $3) AND cd.device_id > $4 \
             ORDER BY cd.device_id LIMIT $5"
        );
        with_pool!(self, pool => {
            Ok(sqlx::query_as(&sql)
                .bind(campaign_id)
                .bind(wave)
                .bind(state)
                .bind(after.unwrap_or(0))
                .bind(limit.clamp(1, 1000))
                .fetch_all(pool)
                .await?)
        })
    }

    /// A campaign's devices in these states, whatever their number.
    pub async fn campaign_devices_in(
        &self,
        campaign_id: i64,
        states: &[&str],
    ) -> Result<Vec<CampaignDevice>, StoreError> {
        let list = states
            .iter()
            .map(|s| format!("'{}'", s.replace('\'', "")))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT {DEVICE_COLUMNS} FROM {DEVICE_FROM} WHERE cd.campaign_id = $1 AND cd.state IN ({list}) \
             ORDER BY cd.device_id"
        );
        with_pool!(self, pool => {
            Ok(sqlx::query_as(&sql).bind(campaign_id).fetch_all(pool).await?)
        })
    }

    /// Watched devices with what the health gate needs. A device that
    /// takes part over the DDI API shows life by polling: a poll since the
    /// watch began counts as online and as telemetry.
    pub async fn watched_devices(
        &self,
        campaign_id: i64,
    ) -> Result<Vec<WatchedDevice>, StoreError> {
        with_pool!(self, pool => {
            Ok(sqlx::query_as(
                "SELECT cd.device_id, cd.watch_from, cd.watch_until, cd.boot_id, d.boot_id AS current_boot_id, \
                 (d.online OR EXISTS (SELECT 1 FROM ddi_targets t WHERE t.device_id = cd.device_id AND t.last_poll_at >= cd.watch_from)) AS online, \
                 d.firmware_version, \
                 (SELECT COUNT(*) FROM (SELECT 1 FROM readings r WHERE r.device_id = cd.device_id AND r.ts >= cd.watch_from LIMIT 1) x) \
                 + (SELECT COUNT(*) FROM ddi_targets t WHERE t.device_id = cd.device_id AND t.last_poll_at >= cd.watch_from) AS readings_since, \
                 (SELECT COUNT(*) FROM device_presence p WHERE p.device_id = cd.device_id AND p.online = FALSE AND p.at >= cd.watch_from) AS disconnects, \
                 (SELECT COUNT(*) FROM alarms a WHERE a.device_id = cd.device_id AND a.raised_at >= cd.watch_from) AS alarms \
                 FROM campaign_devices cd JOIN devices d ON d.id = cd.device_id \
                 WHERE cd.campaign_id = $1 AND cd.state = 'watching' ORDER BY cd.device_id",
            )
            .bind(campaign_id)
            .fetch_all(pool)
            .await?)
        })
    }

    /// Applies device changes of one campaign, each only if the device is
    /// still in its `from_state`; returns the devices changed.
    pub async fn apply_campaign_changes(
        &self,
        campaign_id: i64,
        changes: &[CampaignDeviceChange],
    ) -> Result<Vec<i64>, StoreError> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_millis();
        let mut applied = Vec::new();
        with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            for c in changes {
                let (set_execution, execution) = match c.execution_id {
                    Some(e) => (true, e),
                    None => (false, None),
                };
                let done = sqlx::query(
                    "UPDATE campaign_devices SET state = $1, reason = COALESCE($2, reason), \
                     execution_id = CASE WHEN $3 THEN $4 ELSE execution_id END, \
                     watch_from = COALESCE($5, watch_from), watch_until = COALESCE($6, watch_until), \
                     boot_id = COALESCE($7, boot_id), updated_at = $8 \
                     WHERE campaign_id = $9 AND device_id = $10 AND state = $11",
                )
                .bind(&c.state)
                .bind(&c.reason)
                .bind(set_execution)
                .bind(execution)
                .bind(c.watch_from)
                .bind(c.watch_until)
                .bind(&c.boot_id)
                .bind(now)
                .bind(campaign_id)
                .bind(c.device_id)
                .bind(&c.from_state)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if done == 1 {
                    applied.push(c.device_id);
                }
            }
            tx.commit().await?;
        });
        Ok(applied)
    }

    /// Ties a job's executions to the campaign devices it was made for,
    /// which become active.
    pub async fn activate_campaign_devices(
        &self,
        campaign_id: i64,
        job_id: i64,
        from_states: &[&str],
        to_state: &str,
    ) -> Result<u64, StoreError> {
        let list = from_states
            .iter()
            .map(|s| format!("'{}'", s.replace('\'', "")))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "UPDATE campaign_devices SET state = $1, updated_at = $2, \
             execution_id = (SELECT e.id FROM task_executions e WHERE e.job_id = $3 AND e.device_id = campaign_devices.device_id) \
             WHERE campaign_id = $4 AND state IN ({list}) \
             AND device_id IN (SELECT e.device_id FROM task_executions e WHERE e.job_id = $3)"
        );
        with_pool!(self, pool => {
            Ok(sqlx::query(&sql)
                .bind(to_state)
                .bind(now_millis())
                .bind(job_id)
                .bind(campaign_id)
                .execute(pool)
                .await?
                .rows_affected())
        })
    }

    /// Changes a campaign's state (and reason) if it is still `from`.
    pub async fn set_campaign_state(
        &self,
        id: i64,
        from: &str,
        to: &str,
        reason: Option<&str>,
    ) -> Result<bool, StoreError> {
        let done = with_pool!(self, pool => {
            sqlx::query(
                "UPDATE firmware_campaigns SET state = $1, state_reason = $2, updated_at = $3 WHERE id = $4 AND state = $5",
            )
            .bind(to)
            .bind(reason)
            .bind(now_millis())
            .bind(id)
            .bind(from)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(done == 1)
    }

    /// Resumes a paused campaign with what the user accepted: the failures
    /// so far and the current wave's success ratio.
    pub async fn resume_campaign(
        &self,
        id: i64,
        reason: &str,
        accepted_failed: i64,
        accepted_finished: i64,
    ) -> Result<bool, StoreError> {
        let done = with_pool!(self, pool => {
            sqlx::query(
                "UPDATE firmware_campaigns SET state = 'running', state_reason = $1, updated_at = $2, \
                 accepted_failed = $3, accepted_finished = $4, accepted_wave = current_wave \
                 WHERE id = $5 AND state = 'paused'",
            )
            .bind(reason)
            .bind(now_millis())
            .bind(accepted_failed)
            .bind(accepted_finished)
            .bind(id)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(done == 1)
    }

    /// Marks a campaign as having nothing in flight.
    pub async fn close_campaign(&self, id: i64) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query("UPDATE firmware_campaigns SET finished_at = $1, updated_at = $1 WHERE id = $2 AND finished_at IS NULL")
                .bind(now_millis())
                .bind(id)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Moves a wave on, if it is still in `from`.
    pub async fn set_wave_state(
        &self,
        campaign_id: i64,
        number: i64,
        from: &str,
        to: &str,
    ) -> Result<bool, StoreError> {
        let now = now_millis();
        let column = match to {
            "running" => "started_at",
            "soaking" => "settled_at",
            _ => "done_at",
        };
        let sql = format!(
            "UPDATE campaign_waves SET state = $1, {column} = COALESCE({column}, $2) \
             WHERE campaign_id = $3 AND number = $4 AND state = $5"
        );
        let done = with_pool!(self, pool => {
            sqlx::query(&sql)
                .bind(to)
                .bind(now)
                .bind(campaign_id)
                .bind(number)
                .bind(from)
                .execute(pool)
                .await?
                .rows_affected()
        });
        if done == 1 && to == "done" {
            with_pool!(self, pool => {
                sqlx::query(
                    "UPDATE firmware_campaigns SET current_wave = $1, updated_at = $2 WHERE id = $3 AND current_wave = $4",
                )
                .bind(number + 1)
                .bind(now)
                .bind(campaign_id)
                .bind(number)
                .execute(pool)
                .await?;
            });
        }
        Ok(done == 1)
    }

    /// A device's part in campaigns, newest first.
    pub async fn firmware_history(
        &self,
        scope: &Scope,
        device_id: i64,
    ) -> Result<Vec<FirmwareHistoryEntry>, StoreError> {
        self.device(scope, device_id).await?;
        with_pool!(self, pool => {
            Ok(sqlx::query_as(
                "SELECT c.id AS campaign_id, c.name AS campaign_name, i.id AS image_id, i.version, cd.from_version, \
                 cd.state, cd.reason, cd.updated_at \
                 FROM campaign_devices cd JOIN firmware_campaigns c ON c.id = cd.campaign_id \
                 JOIN firmware_images i ON i.id = c.image_id \
                 WHERE cd.device_id = $1 ORDER BY c.id DESC LIMIT 100",
            )
            .bind(device_id)
            .fetch_all(pool)
            .await?)
        })
    }
}
