//! Device models and devices, always read and written inside a scope.

use crate::{Scope, Store, StoreError, now_millis, with_pool};

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DeviceModel {
    pub id: i64,
    pub name: String,
    pub vendor: String,
    pub hardware_revision: String,
    /// The model's level in device topics, e.g. `311-a1`.
    pub topic_segment: String,
    pub description: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDeviceModel {
    pub name: String,
    pub vendor: String,
    pub hardware_revision: String,
    pub topic_segment: String,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Device {
    pub id: i64,
    pub organisation_id: i64,
    pub model_id: i64,
    pub name: String,
    pub serial: String,
    /// Normalised `00-11-22-33-44-55`: the device id in topics.
    pub mac: String,
    pub imei: Option<String>,
    pub iccid: Option<String>,
    /// Comma-separated labels.
    pub labels: String,
    pub license_state: String,
    pub firmware_version: Option<String>,
    pub created_at: i64,
    pub last_seen_at: Option<i64>,
    /// Connected to the broker now.
    pub online: bool,
}

/// A device to insert; the platform has validated and normalised it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDevice {
    pub organisation_id: i64,
    pub model_id: i64,
    pub name: String,
    pub serial: String,
    pub mac: String,
    pub imei: Option<String>,
    pub iccid: Option<String>,
    pub labels: Vec<String>,
}

/// A page of the device list: filters, and where the last page ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceQuery {
    /// Prefix of name, serial, MAC, IMEI or ICCID.
    pub search: Option<String>,
    pub model_id: Option<i64>,
    /// Only this organisation and those below it (inside the scope).
    pub organisation_id: Option<i64>,
    /// Keyset pagination: devices after this id.
    pub after_id: Option<i64>,
    pub limit: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePage {
    pub devices: Vec<Device>,
    /// Pass as `after_id` for the next page; None on the last one.
    pub next_after_id: Option<i64>,
}

/// One device row; the parameters are bound by [`bind_new_device`].
pub(crate) const INSERT_DEVICE: &str = "INSERT INTO devices (organisation_id, model_id, name, serial, mac, imei, iccid, labels, \
     license_state, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'unlicensed', $9)";

/// Binds a device to [`INSERT_DEVICE`] (on either backend).
macro_rules! bind_new_device {
    ($query:expr, $device:expr, $created_at:expr) => {
        $query
            .bind($device.organisation_id)
            .bind($device.model_id)
            .bind(&$device.name)
            .bind(&$device.serial)
            .bind(&$device.mac)
            .bind(&$device.imei)
            .bind(&$device.iccid)
            .bind($device.labels.join(","))
            .bind($created_at)
    };
}
pub(crate) use bind_new_device;

const DEVICE_COLUMNS: &str = "d.id, d.organisation_id, d.model_id, d.name, d.serial, d.mac, d.imei, d.iccid, \
     d.labels, d.license_state, d.firmware_version, d.created_at, d.last_seen_at, d.online";

impl Store {
    pub async fn create_device_model(
        &self,
        model: &NewDeviceModel,
    ) -> Result<DeviceModel, StoreError> {
        let created_at = now_millis();
        let row = with_pool!(self, pool => {
            sqlx::query_as(
                "INSERT INTO device_models (name, vendor, hardware_revision, topic_segment, description, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 RETURNING id, name, vendor, hardware_revision, topic_segment, description, created_at",
            )
            .bind(&model.name)
            .bind(&model.vendor)
            .bind(&model.hardware_revision)
            .bind(&model.topic_segment)
            .bind(&model.description)
            .bind(created_at)
            .fetch_one(pool)
            .await?
        });
        Ok(row)
    }

    pub async fn device_models(&self) -> Result<Vec<DeviceModel>, StoreError> {
        let rows = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT id, name, vendor, hardware_revision, topic_segment, description, created_at \
                 FROM device_models ORDER BY name",
            )
            .fetch_all(pool)
            .await?
        });
        Ok(rows)
    }

    /// Inserts a batch in one transaction: all of it or, on any error,
    /// none of it. Every device's organisation must be inside `scope`.
    pub async fn insert_devices(
        &self,
        scope: &Scope,
        devices: &[NewDevice],
    ) -> Result<Vec<i64>, StoreError> {
        let created_at = now_millis();
        let ids = with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let mut ids = Vec::with_capacity(devices.len());
            for device in devices {
                let path: Option<String> = sqlx::query_scalar("SELECT path FROM organisations WHERE id = $1")
                    .bind(device.organisation_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                if !path.as_deref().is_some_and(|p| scope.contains(p)) {
                    return Err(StoreError::NotFound(format!("organisation {}", device.organisation_id)));
                }
                let sql = format!("{INSERT_DEVICE} RETURNING id");
                let id: i64 = bind_new_device!(sqlx::query_scalar(&sql), device, created_at)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| match StoreError::from(e) {
                    StoreError::Conflict(_) => StoreError::Conflict(format!(
                        "a device with serial {:?} or MAC {}",
                        device.serial, device.mac
                    )),
                    other => other,
                })?;
                ids.push(id);
            }
            tx.commit().await?;
            ids
        });
        Ok(ids)
    }

    /// One device, if it is inside `scope`.
    pub async fn device(&self, scope: &Scope, id: i64) -> Result<Device, StoreError> {
        let row: Option<Device> = with_pool!(self, pool => {
            sqlx::query_as(&format!(
                "SELECT {DEVICE_COLUMNS} FROM devices d JOIN organisations o ON o.id = d.organisation_id \
                 WHERE d.id = $1 AND o.path LIKE $2"
            ))
            .bind(id)
            .bind(scope.pattern())
            .fetch_optional(pool)
            .await?
        });
        row.ok_or_else(|| StoreError::NotFound(format!("device {id}")))
    }

    /// A page of devices in `scope`, in id order, filtered by `query`.
    pub async fn devices(
        &self,
        scope: &Scope,
        query: &DeviceQuery,
    ) -> Result<DevicePage, StoreError> {
        let limit = query.limit.clamp(1, 1000);
        let subtree = match query.organisation_id {
            Some(id) => self.organisation(scope, id).await?.path,
            None => scope.path.clone(),
        };
        let devices: Vec<Device> = with_pool!(self, pool => {
            let mut q = sqlx::QueryBuilder::new(format!(
                "SELECT {DEVICE_COLUMNS} FROM devices d JOIN organisations o ON o.id = d.organisation_id WHERE o.path LIKE "
            ));
            q.push_bind(format!("{subtree}%"));
            if let Some(after) = query.after_id {
                q.push(" AND d.id > ").push_bind(after);
            }
            if let Some(model) = query.model_id {
                q.push(" AND d.model_id = ").push_bind(model);
            }
            if let Some(search) = query.search.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
                let pattern = format!("{}%", search.replace(['%', '_'], ""));
                q.push(" AND (d.name LIKE ").push_bind(pattern.clone());
                q.push(" OR d.serial LIKE ").push_bind(pattern.clone());
                q.push(" OR d.mac LIKE ").push_bind(pattern.to_ascii_lowercase());
                q.push(" OR d.imei LIKE ").push_bind(pattern.clone());
                q.push(" OR d.iccid LIKE ").push_bind(pattern);
                q.push(")");
            }
            q.push(" ORDER BY d.id LIMIT ").push_bind(i64::from(limit) + 1);
            q.build_query_as().fetch_all(pool).await?
        });
        let mut devices = devices;
        let next_after_id = if devices.len() > limit as usize {
            devices.truncate(limit as usize);
            devices.last().map(|d| d.id)
        } else {
            None
        };
        Ok(DevicePage {
            devices,
            next_after_id,
        })
    }

    /// Devices in `scope`.
    pub async fn count_devices(&self, scope: &Scope) -> Result<i64, StoreError> {
        let n: i64 = with_pool!(self, pool => {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM devices d JOIN organisations o ON o.id = d.organisation_id WHERE o.path LIKE $1",
            )
            .bind(scope.pattern())
            .fetch_one(pool)
            .await?
        });
        Ok(n)
    }
}
