//! The black box: readings (device, metric, time, value) written in
//! batches, read back over a time range at a chosen resolution; log lines;
//! contract faults per device. The ingest resolves devices itself, so
//! writes take no scope; every read does.

use crate::BeginWrite;
use crate::{Scope, Store, StoreError, now_millis, with_pool};

/// Rows per INSERT: four parameters each, well inside both backends' limits.
const ROWS_PER_STATEMENT: usize = 1000;

#[derive(Debug, Clone, PartialEq)]
pub struct NewReading {
    pub device_id: i64,
    pub metric: String,
    pub ts: i64,
    pub value: f64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLogLine {
    pub device_id: i64,
    /// `syslog` or `dmesg`.
    pub stream: String,
    pub ts: i64,
    pub line: String,
}

/// One step of a series: the readings in `[ts, ts + step)`.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct SeriesPoint {
    pub ts: i64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    pub count: i64,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct LatestReading {
    pub metric: String,
    pub ts: i64,
    pub value: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LogLine {
    pub id: i64,
    pub stream: String,
    pub ts: i64,
    pub line: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogQuery {
    pub stream: Option<String>,
    /// Lines containing this text.
    pub search: Option<String>,
    pub from: Option<i64>,
    pub to: Option<i64>,
    /// Newest first: lines before this id.
    pub before_id: Option<i64>,
    pub limit: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TelemetryFault {
    pub count: i64,
    pub last_error: String,
    pub last_at: i64,
}

impl Store {
    /// Writes readings in one transaction; a reading already stored (same
    /// device, metric and time) is not stored again.
    pub async fn insert_readings(&self, readings: &[NewReading]) -> Result<(), StoreError> {
        if readings.is_empty() {
            return Ok(());
        }
        let ids = self.metric_ids_of(readings).await?;
        let mut rows = Vec::with_capacity(readings.len());
        for r in readings {
            let id = ids
                .get(r.metric.as_str())
                .copied()
                .ok_or_else(|| StoreError::Invalid(format!("metric {:?} has no id", r.metric)))?;
            rows.push((r.device_id, r.ts, id, r.value));
        }
        // The same reading twice (a QoS 1 redelivery) is kept once.
        match &self.telemetry_store().pool {
            crate::Pool::Sqlite(pool) => {
                let mut tx = pool.begin_write().await?;
                for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                    let mut q = sqlx::QueryBuilder::new(
                        "INSERT INTO readings (device_id, ts, metric_id, value) ",
                    );
                    q.push_values(chunk, |mut row, r| {
                        row.push_bind(r.0)
                            .push_bind(r.1)
                            .push_bind(r.2)
                            .push_bind(r.3);
                    });
                    q.push(" ON CONFLICT (device_id, ts, metric_id) DO NOTHING");
                    q.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
            }
            // PostgreSQL takes a column of values as one array parameter:
            // one short statement per 50,000 rows instead of 50 of 4,000
            // parameters to parse and plan.
            crate::Pool::Postgres(pool) => {
                let mut tx = pool.begin_write().await?;
                for chunk in rows.chunks(50_000) {
                    let metric_ids = chunk
                        .iter()
                        .map(|r| i32::try_from(r.2))
                        .collect::<Result<Vec<i32>, _>>()
                        .map_err(|_| StoreError::Invalid("metric id out of range".into()))?;
                    sqlx::query(
                        "INSERT INTO readings (device_id, ts, metric_id, value) \
                         SELECT * FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::INTEGER[], $4::DOUBLE PRECISION[]) \
                         ON CONFLICT (device_id, ts, metric_id) DO NOTHING",
                    )
                    .bind(chunk.iter().map(|r| r.0).collect::<Vec<i64>>())
                    .bind(chunk.iter().map(|r| r.1).collect::<Vec<i64>>())
                    .bind(metric_ids)
                    .bind(chunk.iter().map(|r| r.3).collect::<Vec<f64>>())
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// The id of each metric name in `readings`; names seen for the first
    /// time get one in `metrics`.
    async fn metric_ids_of(
        &self,
        readings: &[NewReading],
    ) -> Result<std::collections::HashMap<String, i64>, StoreError> {
        let mut ids = self
            .metric_ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut new: Vec<&str> = readings
            .iter()
            .map(|r| r.metric.as_str())
            .filter(|m| !ids.contains_key(*m))
            .collect();
        if new.is_empty() {
            return Ok(ids);
        }
        new.sort_unstable();
        new.dedup();
        for name in new {
            let id: i64 = with_pool!(self, pool => {
                sqlx::query("INSERT INTO metrics (name) VALUES ($1) ON CONFLICT (name) DO NOTHING")
                    .bind(name)
                    .execute(pool)
                    .await?;
                sqlx::query_scalar("SELECT CAST(id AS BIGINT) FROM metrics WHERE name = $1")
                    .bind(name)
                    .fetch_one(pool)
                    .await?
            });
            ids.insert(name.to_owned(), id);
        }
        self.metric_ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone_from(&ids);
        Ok(ids)
    }

    pub async fn insert_log_lines(&self, lines: &[NewLogLine]) -> Result<(), StoreError> {
        if lines.is_empty() {
            return Ok(());
        }
        let writer = self.telemetry_store();
        with_pool!(writer, pool => {
            let mut tx = pool.begin_write().await?;
            for chunk in lines.chunks(ROWS_PER_STATEMENT) {
                let mut q = sqlx::QueryBuilder::new("INSERT INTO device_logs (device_id, stream, ts, line) ");
                q.push_values(chunk, |mut row, l| {
                    row.push_bind(l.device_id).push_bind(&l.stream).push_bind(l.ts).push_bind(&l.line);
                });
                q.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Counts `count` messages that broke the contract and keeps the last error.
    pub async fn record_telemetry_faults(
        &self,
        device_id: i64,
        count: i64,
        error: &str,
    ) -> Result<(), StoreError> {
        let now = now_millis();
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO telemetry_faults (device_id, count, last_error, last_at) VALUES ($1, $4, $2, $3) \
                 ON CONFLICT (device_id) DO UPDATE SET count = telemetry_faults.count + excluded.count, \
                 last_error = excluded.last_error, last_at = excluded.last_at",
            )
            .bind(device_id)
            .bind(error)
            .bind(now)
            .bind(count)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    pub async fn telemetry_fault(
        &self,
        scope: &Scope,
        device_id: i64,
    ) -> Result<Option<TelemetryFault>, StoreError> {
        self.device(scope, device_id).await?;
        let row = with_pool!(self, pool => {
            sqlx::query_as("SELECT count, last_error, last_at FROM telemetry_faults WHERE device_id = $1")
                .bind(device_id)
                .fetch_optional(pool)
                .await?
        });
        Ok(row)
    }

    /// Records the firmware versions devices reported, in one transaction:
    /// a fleet coming online reports thousands at once.
    pub async fn set_devices_firmware(&self, versions: &[(i64, String)]) -> Result<(), StoreError> {
        if versions.is_empty() {
            return Ok(());
        }
        // In id order, as every batch update of devices: no deadlock.
        let mut versions = versions.to_vec();
        versions.sort_by_key(|(device, _)| *device);
        with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            for (device_id, version) in &versions {
                sqlx::query(
                    "UPDATE devices SET firmware_version = $1 WHERE id = $2 \
                     AND (firmware_version IS NULL OR firmware_version <> $1)",
                )
                .bind(version)
                .bind(device_id)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// A device's series over `[from, to)` in steps of `step_ms`: min, max
    /// and mean of each step that has readings.
    pub async fn series(
        &self,
        scope: &Scope,
        device_id: i64,
        metric: &str,
        from: i64,
        to: i64,
        step_ms: i64,
    ) -> Result<Vec<SeriesPoint>, StoreError> {
        self.device(scope, device_id).await?;
        let step = step_ms.max(1);
        // Steps of an hour or more read the hourly table for what it has
        // rolled up, raw readings for the rest.
        let raw_from = match self.rolled_up_until().await? {
            Some(mark) if step >= 3_600_000 && from < mark => mark.min(to),
            _ => from,
        };
        let mut points: Vec<SeriesPoint> = Vec::new();
        if raw_from > from {
            let hourly: Vec<SeriesPoint> = with_pool!(self, pool => {
                sqlx::query_as(
                    "SELECT (hour / $4) * $4 AS ts, MIN(min) AS min, MAX(max) AS max, \
                     SUM(mean * count) / CAST(SUM(count) AS DOUBLE PRECISION) AS mean, CAST(SUM(count) AS BIGINT) AS count \
                     FROM readings_hourly WHERE device_id = $1 AND metric = $2 AND hour >= $3 AND hour < $5 \
                     GROUP BY hour / $4 ORDER BY 1",
                )
                .bind(device_id)
                .bind(metric)
                .bind(from)
                .bind(step)
                .bind(raw_from)
                .fetch_all(pool)
                .await?
            });
            points.extend(hourly);
        }
        let from = raw_from;
        let rows: Vec<SeriesPoint> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT (ts / $4) * $4 AS ts, MIN(value) AS min, MAX(value) AS max, AVG(value) AS mean, COUNT(*) AS count \
                 FROM readings WHERE device_id = $1 AND metric_id = (SELECT id FROM metrics WHERE name = $2) \
                 AND ts >= $3 AND ts < $5 \
                 GROUP BY ts / $4 ORDER BY 1",
            )
            .bind(device_id)
            .bind(metric)
            .bind(from)
            .bind(step)
            .bind(to)
            .fetch_all(pool)
            .await?
        });
        for p in rows {
            // A step split by the roll-up mark is one point.
            match points.last_mut() {
                Some(last) if last.ts == p.ts => {
                    let count = last.count + p.count;
                    last.mean =
                        (last.mean * last.count as f64 + p.mean * p.count as f64) / count as f64;
                    last.min = last.min.min(p.min);
                    last.max = last.max.max(p.max);
                    last.count = count;
                }
                _ => points.push(p),
            }
        }
        Ok(points)
    }

    /// The last reading of each metric the device reported in the day
    /// before its newest reading.
    pub async fn latest_readings(
        &self,
        scope: &Scope,
        device_id: i64,
    ) -> Result<Vec<LatestReading>, StoreError> {
        self.device(scope, device_id).await?;
        let rows = with_pool!(self, pool => {
            sqlx::query_as(
                // Within a day of the device's newest reading: the key is in
                // time order, so this reads a day of rows, not the device's week.
                "SELECT m.name AS metric, r.ts, r.value FROM readings r \
                 JOIN (SELECT metric_id, MAX(ts) AS ts FROM readings WHERE device_id = $1 \
                       AND ts >= (SELECT MAX(ts) FROM readings WHERE device_id = $1) - 86400000 GROUP BY metric_id) l \
                 ON l.metric_id = r.metric_id AND l.ts = r.ts JOIN metrics m ON m.id = r.metric_id \
                 WHERE r.device_id = $1 ORDER BY m.name",
            )
            .bind(device_id)
            .fetch_all(pool)
            .await?
        });
        Ok(rows)
    }

    /// The metrics a device has readings of.
    pub async fn device_metrics(
        &self,
        scope: &Scope,
        device_id: i64,
    ) -> Result<Vec<String>, StoreError> {
        Ok(self
            .latest_readings(scope, device_id)
            .await?
            .into_iter()
            .map(|r| r.metric)
            .collect())
    }

    /// A device's log lines, newest first.
    pub async fn device_logs(
        &self,
        scope: &Scope,
        device_id: i64,
        query: &LogQuery,
    ) -> Result<Vec<LogLine>, StoreError> {
        self.device(scope, device_id).await?;
        let limit = i64::from(query.limit.clamp(1, 1000));
        let rows = with_pool!(self, pool => {
            let mut q = sqlx::QueryBuilder::new("SELECT id, stream, ts, line FROM device_logs WHERE device_id = ");
            q.push_bind(device_id);
            if let Some(stream) = &query.stream {
                q.push(" AND stream = ").push_bind(stream.clone());
            }
            if let Some(search) = query.search.as_deref().filter(|s| !s.is_empty()) {
                q.push(" AND line LIKE ")
                    .push_bind(format!("%{}%", crate::like_literal(search)))
                    .push(" ESCAPE '\\'");
            }
            if let Some(from) = query.from {
                q.push(" AND ts >= ").push_bind(from);
            }
            if let Some(to) = query.to {
                q.push(" AND ts < ").push_bind(to);
            }
            if let Some(before) = query.before_id {
                q.push(" AND id < ").push_bind(before);
            }
            q.push(" ORDER BY id DESC LIMIT ").push_bind(limit);
            q.build_query_as().fetch_all(pool).await?
        });
        Ok(rows)
    }

    /// Where the hourly roll-up has come to (an hour boundary, Unix ms).
    pub async fn rolled_up_until(&self) -> Result<Option<i64>, StoreError> {
        let value = with_pool!(self, pool => {
            sqlx::query_scalar("SELECT value FROM job_marks WHERE name = 'hourly-rollup'")
                .fetch_optional(pool)
                .await?
        });
        Ok(value)
    }

    /// The time of the oldest raw reading.
    pub async fn oldest_reading(&self) -> Result<Option<i64>, StoreError> {
        let value: Option<i64> = with_pool!(self, pool => {
            // One seek per device through the key (there is no index on ts).
            sqlx::query_scalar(
                "SELECT MIN((SELECT MIN(r.ts) FROM readings r WHERE r.device_id = d.id)) FROM devices d",
            )
            .fetch_one(pool)
            .await?
        });
        Ok(value)
    }

    /// Rolls the raw readings of `[from, to)` (hour boundaries) up into
    /// hourly min/max/mean, and marks `to` as done, in one transaction.
    /// Device by device (`CROSS JOIN` keeps SQLite's loop in that order):
    /// each device's hour is one range of the key.
    pub async fn roll_up_hours(&self, from: i64, to: i64) -> Result<u64, StoreError> {
        let writer = self.telemetry_store();
        let rows = with_pool!(writer, pool => {
            let mut tx = pool.begin_write().await?;
            let rows = sqlx::query(
                "INSERT INTO readings_hourly (device_id, metric, hour, min, max, mean, count) \
                 SELECT r.device_id, m.name, (r.ts / 3600000) * 3600000, MIN(r.value), MAX(r.value), AVG(r.value), COUNT(*) \
                 FROM devices d CROSS JOIN readings r JOIN metrics m ON m.id = r.metric_id \
                 WHERE r.device_id = d.id AND r.ts >= $1 AND r.ts < $2 \
                 GROUP BY r.device_id, m.id, m.name, r.ts / 3600000 \
                 ON CONFLICT (device_id, metric, hour) DO UPDATE SET min = excluded.min, max = excluded.max, \
                 mean = excluded.mean, count = excluded.count",
            )
            .bind(from)
            .bind(to)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            sqlx::query(
                "INSERT INTO job_marks (name, value) VALUES ('hourly-rollup', $1) \
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            )
            .bind(to)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            rows
        });
        Ok(rows)
    }

    /// Deletes hourly aggregates older than `before`.
    pub async fn prune_hourly(&self, before: i64) -> Result<u64, StoreError> {
        let writer = self.telemetry_store();
        let n = with_pool!(writer, pool => {
            sqlx::query("DELETE FROM readings_hourly WHERE hour < $1").bind(before).execute(pool).await?.rows_affected()
        });
        Ok(n)
    }

    /// Deletes readings, log lines and presence changes older than `before`
    /// (Unix ms); returns how many rows went.
    pub async fn prune_telemetry(&self, before: i64) -> Result<u64, StoreError> {
        let writer = self.telemetry_store();
        let n = with_pool!(writer, pool => {
            // Device by device through the key: readings have no index on ts.
            let a = sqlx::query("DELETE FROM readings WHERE device_id IN (SELECT id FROM devices) AND ts < $1")
                .bind(before)
                .execute(pool)
                .await?
                .rows_affected();
            let b = sqlx::query("DELETE FROM device_logs WHERE ts < $1").bind(before).execute(pool).await?.rows_affected();
            let c = sqlx::query("DELETE FROM device_presence WHERE at < $1").bind(before).execute(pool).await?.rows_affected();
            a + b + c
        });
        Ok(n)
    }

    /// Readings stored in all, for ingest accounting.
    pub async fn count_readings(&self) -> Result<i64, StoreError> {
        let n = with_pool!(self, pool => {
            sqlx::query_scalar("SELECT COUNT(*) FROM readings").fetch_one(pool).await?
        });
        Ok(n)
    }
}
