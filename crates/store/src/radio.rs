//! The radio a device is on (technology, band, carrier aggregation,
//! operator, cell) and its changes: a band or cell handover is an event an
//! engineer looks for beside a drop in signal.

use std::collections::HashMap;

use crate::{BeginWrite, Scope, Store, StoreError, now_millis, with_pool};

/// What the radio looks like now, as one observation reports it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RadioState {
    pub device_id: i64,
    pub technology: Option<String>,
    pub band: Option<String>,
    /// JSON `[{band, pci, rsrp_dbm}]`.
    pub carrier_aggregation: String,
    pub operator: Option<String>,
    pub cell_id: Option<i64>,
    pub smcc: Option<i64>,
    pub smnc: Option<i64>,
    /// `telemetry` or `modem_status`.
    pub source: String,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RadioChange {
    pub id: i64,
    pub device_id: i64,
    pub at: i64,
    /// `band`, `cell`, `operator`, `technology` or `carrier_aggregation`.
    pub kind: String,
    pub before_value: Option<String>,
    pub after_value: Option<String>,
}

const STATE_COLUMNS: &str = "device_id, technology, band, carrier_aggregation, operator, cell_id, smcc, smnc, source, updated_at";

/// The bands of the secondary cells, `B7+B20`: what a change of carrier
/// aggregation means (their signal changes with every reading).
fn carrier_bands(json: &str) -> String {
    let components: Vec<serde_json::Value> = serde_json::from_str(json).unwrap_or_default();
    components
        .iter()
        .filter_map(|c| c.get("band").and_then(|b| b.as_str()))
        .collect::<Vec<_>>()
        .join("+")
}

impl RadioState {
    /// The fields whose change is worth an event, by kind.
    fn watched(&self) -> [(&'static str, Option<String>); 5] {
        [
            ("technology", self.technology.clone()),
            ("band", self.band.clone()),
            (
                "carrier_aggregation",
                Some(carrier_bands(&self.carrier_aggregation)),
            ),
            ("operator", self.operator.clone()),
            ("cell", self.cell_id.map(|c| c.to_string())),
        ]
    }
}

impl Store {
    /// Keeps the latest radio state of each device and records what changed
    /// since the stored one, in one transaction. One observation per device.
    pub async fn record_radio(&self, observations: &[RadioState]) -> Result<usize, StoreError> {
        if observations.is_empty() {
            return Ok(0);
        }
        let mut observations = observations.to_vec();
        // Rows locked in id order, as every batch update of devices.
        observations.sort_by_key(|o| o.device_id);
        let now = now_millis();
        let mut changes = 0;
        for chunk in observations.chunks(500) {
            let ids = (1..=chunk.len())
                .map(|n| format!("${n}"))
                .collect::<Vec<_>>()
                .join(", ");
            let sql =
                format!("SELECT {STATE_COLUMNS} FROM device_radio WHERE device_id IN ({ids})");
            with_pool!(self, pool => {
                let mut tx = pool.begin_write().await?;
                let mut q = sqlx::query_as::<_, RadioState>(&sql);
                for o in chunk {
                    q = q.bind(o.device_id);
                }
                let before: HashMap<i64, RadioState> = q
                    .fetch_all(&mut *tx)
                    .await?
                    .into_iter()
                    .map(|s| (s.device_id, s))
                    .collect();
                for o in chunk {
                    if let Some(old) = before.get(&o.device_id) {
                        for ((kind, was), (_, is)) in old.watched().into_iter().zip(o.watched()) {
                            // A reading without the value says nothing new.
                            if is.is_some() && was != is {
                                sqlx::query(
                                    "INSERT INTO radio_changes (device_id, at, kind, before_value, after_value) VALUES ($1, $2, $3, $4, $5)",
                                )
                                .bind(o.device_id)
                                .bind(now)
                                .bind(kind)
                                .bind(&was)
                                .bind(&is)
                                .execute(&mut *tx)
                                .await?;
                                changes += 1;
                            }
                        }
                    }
                    sqlx::query(
                        "INSERT INTO device_radio (device_id, technology, band, carrier_aggregation, operator, cell_id, smcc, smnc, source, updated_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (device_id) DO UPDATE SET \
                         technology = COALESCE(excluded.technology, device_radio.technology), \
                         band = COALESCE(excluded.band, device_radio.band), \
                         carrier_aggregation = excluded.carrier_aggregation, \
                         operator = COALESCE(excluded.operator, device_radio.operator), \
                         cell_id = COALESCE(excluded.cell_id, device_radio.cell_id), \
                         smcc = COALESCE(excluded.smcc, device_radio.smcc), \
                         smnc = COALESCE(excluded.smnc, device_radio.smnc), \
                         source = excluded.source, updated_at = excluded.updated_at",
                    )
                    .bind(o.device_id)
                    .bind(&o.technology)
                    .bind(&o.band)
                    .bind(&o.carrier_aggregation)
                    .bind(&o.operator)
                    .bind(o.cell_id)
                    .bind(o.smcc)
                    .bind(o.smnc)
                    .bind(&o.source)
                    .bind(o.updated_at)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
            });
        }
        Ok(changes)
    }

    /// A device's radio state, if it ever reported one.
    pub async fn radio_state(
        &self,
        scope: &Scope,
        device_id: i64,
    ) -> Result<Option<RadioState>, StoreError> {
        self.device(scope, device_id).await?;
        let sql = format!("SELECT {STATE_COLUMNS} FROM device_radio WHERE device_id = $1");
        with_pool!(self, pool => {
            Ok(sqlx::query_as(&sql).bind(device_id).fetch_optional(pool).await?)
        })
    }

    /// A device's radio changes, newest first.
    pub async fn radio_changes(
        &self,
        scope: &Scope,
        device_id: i64,
        before_id: Option<i64>,
        limit: u32,
    ) -> Result<Vec<RadioChange>, StoreError> {
        self.device(scope, device_id).await?;
        with_pool!(self, pool => {
            Ok(sqlx::query_as(
                "SELECT id, device_id, at, kind, before_value, after_value FROM radio_changes \
                 WHERE device_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
            )
            .bind(device_id)
            .bind(before_id.unwrap_or(i64::MAX))
            .bind(i64::from(limit.clamp(1, 1000)))
            .fetch_all(pool)
            .await?)
        })
    }
}
