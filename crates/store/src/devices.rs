//! Device models and devices, always read and written inside a scope.

use crate::BeginWrite;
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

/// A page of the device list: filters, order, and where the last page ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceQuery {
    /// Prefix of name, serial, MAC, IMEI or ICCID.
    pub search: Option<String>,
    pub model_id: Option<i64>,
    /// Only this organisation and those below it (inside the scope).
    pub organisation_id: Option<i64>,
    pub license_state: Option<String>,
    pub online: Option<bool>,
    /// Devices that carry this label.
    pub label: Option<String>,
    /// Devices that reported exactly this firmware version.
    pub firmware_version: Option<String>,
    pub sort: DeviceSort,
    pub descending: bool,
    /// Keyset pagination: the last device of the previous page.
    pub after: Option<DeviceCursor>,
    pub limit: u32,
}

/// The orders the device list can be read in; ties are broken by id.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeviceSort {
    #[default]
    Id,
    Name,
    Serial,
    /// Never-seen devices count as seen at time 0.
    LastSeen,
}

impl DeviceSort {
    fn column(self) -> &'static str {
        match self {
            DeviceSort::Id => "d.id",
            DeviceSort::Name => "d.name",
            DeviceSort::Serial => "d.serial",
            DeviceSort::LastSeen => "COALESCE(d.last_seen_at, 0)",
        }
    }
}

/// Where a page ended: the sort value and id of its last device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceCursor {
    Id(i64),
    Text(String, i64),
    Number(i64, i64),
}

impl DeviceCursor {
    fn of(sort: DeviceSort, device: &Device) -> Self {
        match sort {
            DeviceSort::Id => DeviceCursor::Id(device.id),
            DeviceSort::Name => DeviceCursor::Text(device.name.clone(), device.id),
            DeviceSort::Serial => DeviceCursor::Text(device.serial.clone(), device.id),
            DeviceSort::LastSeen => {
                DeviceCursor::Number(device.last_seen_at.unwrap_or(0), device.id)
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePage {
    pub devices: Vec<Device>,
    /// Pass as `after` for the next page; None on the last one.
    pub next: Option<DeviceCursor>,
}

/// The smallest string greater than every string that starts with `prefix`
/// (in byte order), so a prefix search is an index range scan.
fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        if let Some(next) = char::from_u32(last as u32 + 1) {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
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
            let mut tx = pool.begin_write().await?;
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
        let sort = query.sort;
        let (cmp, direction) = if query.descending {
            ("<", "DESC")
        } else {
            (">", "ASC")
        };
        let mut devices: Vec<Device> = with_pool!(self, pool => {
            let mut q = sqlx::QueryBuilder::new(format!(
                "SELECT {DEVICE_COLUMNS} FROM devices d JOIN organisations o ON o.id = d.organisation_id WHERE o.path LIKE "
            ));
            q.push_bind(format!("{subtree}%"));
            match &query.after {
                None => {}
                Some(DeviceCursor::Id(id)) => {
                    q.push(format!(" AND d.id {cmp} ")).push_bind(*id);
                }
                Some(DeviceCursor::Text(value, id)) => {
                    let column = sort.column();
                    q.push(format!(" AND ({column} {cmp} ")).push_bind(value.clone());
                    q.push(format!(" OR ({column} = ")).push_bind(value.clone());
                    q.push(format!(" AND d.id {cmp} ")).push_bind(*id).push("))");
                }
                Some(DeviceCursor::Number(value, id)) => {
                    let column = sort.column();
                    q.push(format!(" AND ({column} {cmp} ")).push_bind(*value);
                    q.push(format!(" OR ({column} = ")).push_bind(*value);
                    q.push(format!(" AND d.id {cmp} ")).push_bind(*id).push("))");
                }
            }
            if let Some(model) = query.model_id {
                q.push(" AND d.model_id = ").push_bind(model);
            }
            if let Some(state) = &query.license_state {
                q.push(" AND d.license_state = ").push_bind(state.clone());
            }
            if let Some(online) = query.online {
                q.push(" AND d.online = ").push_bind(online);
            }
            if let Some(version) = &query.firmware_version {
                q.push(" AND d.firmware_version = ").push_bind(version.clone());
            }
            if let Some(label) = query.label.as_deref().map(str::trim).filter(|l| !l.is_empty()) {
                q.push(" AND (',' || d.labels || ',') LIKE ")
                    .push_bind(format!("%,{},%", crate::like_literal(label)))
                    .push(" ESCAPE '\\'");
            }
            if let Some(search) = query.search.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
                // Each identifier is its own index range, the union of them a
                // short list of ids: no scan of the whole registry.
                let mac = search.to_ascii_lowercase().replace(':', "-");
                q.push(" AND d.id IN (");
                let columns = [("name", search), ("serial", search), ("mac", mac.as_str()), ("imei", search), ("iccid", search)];
                for (i, (column, prefix)) in columns.into_iter().enumerate() {
                    if i > 0 {
                        q.push(" UNION ALL ");
                    }
                    q.push(format!("SELECT id FROM devices WHERE {column} >= ")).push_bind(prefix.to_owned());
                    if let Some(upper) = prefix_upper_bound(prefix) {
                        q.push(format!(" AND {column} < ")).push_bind(upper);
                    }
                    // The range is exact in byte order; LIKE keeps it exact under
                    // any collation.
                    q.push(format!(" AND {column} LIKE "))
                        .push_bind(format!("{}%", crate::like_literal(prefix)))
                        .push(" ESCAPE '\\'");
                }
                q.push(")");
            }
            let column = sort.column();
            if sort == DeviceSort::Id {
                q.push(format!(" ORDER BY d.id {direction} LIMIT "));
            } else {
                q.push(format!(" ORDER BY {column} {direction}, d.id {direction} LIMIT "));
            }
            q.push_bind(i64::from(limit) + 1);
            q.build_query_as().fetch_all(pool).await?
        });
        let next = if devices.len() > limit as usize {
            devices.truncate(limit as usize);
            devices.last().map(|d| DeviceCursor::of(sort, d))
        } else {
            None
        };
        Ok(DevicePage { devices, next })
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

impl Store {
    /// Adds and removes labels on the devices of `ids` in `scope`, in one
    /// transaction; a device outside the scope fails the whole change.
    /// Returns how many devices changed.
    pub async fn relabel_devices(
        &self,
        scope: &Scope,
        ids: &[i64],
        add: &[String],
        remove: &[String],
    ) -> Result<usize, StoreError> {
        let mut changes = Vec::with_capacity(ids.len());
        for &id in ids {
            let device = self.device(scope, id).await?;
            let mut labels: Vec<String> = device
                .labels
                .split(',')
                .filter(|l| !l.is_empty() && !remove.iter().any(|r| r == l))
                .map(str::to_owned)
                .collect();
            for label in add {
                if !labels.contains(label) {
                    labels.push(label.clone());
                }
            }
            let labels = labels.join(",");
            if labels != device.labels {
                changes.push((id, labels));
            }
        }
        with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            for (id, labels) in &changes {
                sqlx::query("UPDATE devices SET labels = $1 WHERE id = $2")
                    .bind(labels)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(changes.len())
    }
}

impl Store {
    /// The names of the devices of `ids` that are in `scope`.
    pub async fn device_names(
        &self,
        scope: &Scope,
        ids: &[i64],
    ) -> Result<std::collections::HashMap<i64, String>, StoreError> {
        if ids.is_empty() {
            return Ok(Default::default());
        }
        let rows: Vec<(i64, String)> = with_pool!(self, pool => {
            let mut q = sqlx::QueryBuilder::new(
                "SELECT d.id, d.name FROM devices d JOIN organisations o ON o.id = d.organisation_id WHERE o.path LIKE ",
            );
            q.push_bind(scope.pattern()).push(" AND d.id IN (");
            let mut list = q.separated(", ");
            for id in ids {
                list.push_bind(*id);
            }
            list.push_unseparated(")");
            q.build_query_as().fetch_all(pool).await?
        });
        Ok(rows.into_iter().collect())
    }
}
