//! ERP import batches (devices, license keys) and their records: who
//! imported what, when, from which file, what was accepted and what was
//! rejected on which line.

use std::collections::HashMap;

use crate::BeginWrite;
use crate::{NewDevice, Scope, Store, StoreError, now_millis, with_pool};

/// A row that was not imported, and why.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Rejection {
    pub line: i64,
    pub reason: String,
}

/// A validated batch: the rows that passed the platform's checks (with their
/// line numbers) and those that did not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportBatch<Row = NewDevice> {
    pub actor: String,
    pub source_name: String,
    /// Accept the good rows even when some are rejected; otherwise all or nothing.
    pub partial: bool,
    pub rows: Vec<(i64, Row)>,
    pub rejected: Vec<Rejection>,
}

/// What an import brought in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportKind {
    Devices,
    LicenseKeys,
}

impl ImportKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ImportKind::Devices => "devices",
            ImportKind::LicenseKeys => "license_keys",
        }
    }
}

/// A page of import records, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportQuery {
    pub kind: Option<String>,
    pub before_id: Option<i64>,
    pub limit: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportRecord {
    pub id: i64,
    /// `devices` or `license_keys`.
    pub kind: String,
    pub organisation_id: i64,
    pub actor: String,
    pub source_name: String,
    pub partial: bool,
    pub rows_accepted: i64,
    pub rows_rejected: i64,
    pub created_at: i64,
    pub rejections: Vec<Rejection>,
}

#[derive(sqlx::FromRow)]
struct ImportRow {
    id: i64,
    kind: String,
    organisation_id: i64,
    actor: String,
    source_name: String,
    partial: bool,
    rows_accepted: i64,
    rows_rejected: i64,
    created_at: i64,
}

/// Rows in one multi-row statement: 10 parameters each stays far below
/// SQLite's and PostgreSQL's limits.
const ROWS_PER_STATEMENT: usize = 500;

/// Writes the record of an import (and its rejections) in the batch's
/// transaction; a macro because the transaction's type is the backend's.
macro_rules! write_record {
    ($tx:ident, $scope:expr, $batch:expr, $kind:expr, $written:expr, $rejected:expr, $created_at:expr) => {{
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO device_imports (organisation_id, actor, source_name, partial, rows_accepted, rows_rejected, created_at, kind) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        )
        .bind($scope.organisation_id)
        .bind(&$batch.actor)
        .bind(&$batch.source_name)
        .bind($batch.partial)
        .bind($written)
        .bind($rejected.len() as i64)
        .bind($created_at)
        .bind($kind.as_str())
        .fetch_one(&mut *$tx)
        .await?;
        for chunk in $rejected.chunks(ROWS_PER_STATEMENT) {
            let mut q = sqlx::QueryBuilder::new("INSERT INTO device_import_rejections (import_id, line, reason) ");
            q.push_values(chunk, |mut row, r| {
                row.push_bind(id).push_bind(r.line).push_bind(&r.reason);
            });
            q.build().execute(&mut *$tx).await?;
        }
        ImportRecord {
            id,
            kind: $kind.as_str().to_owned(),
            organisation_id: $scope.organisation_id,
            actor: $batch.actor.clone(),
            source_name: $batch.source_name.clone(),
            partial: $batch.partial,
            rows_accepted: $written,
            rows_rejected: $rejected.len() as i64,
            created_at: $created_at,
            rejections: $rejected,
        }
    }};
}

const RECORD_COLUMNS: &str = "i.id, i.kind, i.organisation_id, i.actor, i.source_name, i.partial, i.rows_accepted, i.rows_rejected, i.created_at";

impl ImportRow {
    fn into_record(self, rejections: Vec<Rejection>) -> ImportRecord {
        ImportRecord {
            id: self.id,
            kind: self.kind,
            organisation_id: self.organisation_id,
            actor: self.actor,
            source_name: self.source_name,
            partial: self.partial,
            rows_accepted: self.rows_accepted,
            rows_rejected: self.rows_rejected,
            created_at: self.created_at,
            rejections,
        }
    }
}

impl Store {
    /// Imports license keys bought through the ERP as `available` keys of
    /// one organisation (inside `scope`) and service model, in one
    /// transaction, and records the batch. A key that is already known is
    /// rejected with its line; without `partial`, any rejection means no key
    /// is written. The record is written either way.
    pub async fn import_license_keys(
        &self,
        scope: &Scope,
        organisation_id: i64,
        service_model_id: i64,
        batch: ImportBatch<String>,
    ) -> Result<ImportRecord, StoreError> {
        self.organisation(scope, organisation_id).await?;
        self.service_model(service_model_id).await?;
        let created_at = now_millis();
        let record = with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let mut rejected = batch.rejected.clone();
            let mut accepted = Vec::with_capacity(batch.rows.len());
            for (line, key) in &batch.rows {
                let taken: Option<i64> = sqlx::query_scalar("SELECT id FROM license_keys WHERE license_key = $1")
                    .bind(key)
                    .fetch_optional(&mut *tx)
                    .await?;
                if taken.is_some() {
                    rejected.push(Rejection { line: *line, reason: format!("license key {key} is already registered") });
                } else {
                    accepted.push(key);
                }
            }
            rejected.sort_by_key(|r| r.line);
            let mut written = 0i64;
            if batch.partial || rejected.is_empty() {
                for key in accepted {
                    sqlx::query(
                        "INSERT INTO license_keys (license_key, organisation_id, service_model_id, state, created_at) \
                         VALUES ($1, $2, $3, 'available', $4)",
                    )
                    .bind(key)
                    .bind(organisation_id)
                    .bind(service_model_id)
                    .bind(created_at)
                    .execute(&mut *tx)
                    .await?;
                    written += 1;
                }
            }
            let record = write_record!(tx, scope, batch, ImportKind::LicenseKeys, written, rejected, created_at);
            tx.commit().await?;
            record
        });
        Ok(record)
    }

    /// Import records made inside `scope`, newest first.
    pub async fn import_records(
        &self,
        scope: &Scope,
        query: &ImportQuery,
    ) -> Result<Vec<ImportRecord>, StoreError> {
        let limit = i64::from(query.limit.clamp(1, 1000));
        let rows: Vec<ImportRow> = with_pool!(self, pool => {
            let mut q = sqlx::QueryBuilder::new(format!(
                "SELECT {RECORD_COLUMNS} FROM device_imports i JOIN organisations o ON o.id = i.organisation_id WHERE o.path LIKE "
            ));
            q.push_bind(scope.pattern());
            if let Some(kind) = &query.kind {
                q.push(" AND i.kind = ").push_bind(kind.clone());
            }
            if let Some(before) = query.before_id {
                q.push(" AND i.id < ").push_bind(before);
            }
            q.push(" ORDER BY i.id DESC LIMIT ").push_bind(limit);
            q.build_query_as().fetch_all(pool).await?
        });
        // Lists show counts; the rejections come with one record.
        Ok(rows
            .into_iter()
            .map(|row| row.into_record(Vec::new()))
            .collect())
    }

    /// Imports a batch in one transaction and records it. Rows whose serial
    /// or MAC is already registered, or whose organisation is outside
    /// `scope`, are rejected with their line; without `partial`, any
    /// rejection means no device is written. The record is written either way.
    pub async fn import_devices(
        &self,
        scope: &Scope,
        batch: ImportBatch,
    ) -> Result<ImportRecord, StoreError> {
        let created_at = now_millis();
        // Everything is checked before the write lock is taken: on SQLite
        // the lock stops the ingest too, and a 100,000-row file checked
        // row by row under it stalled telemetry for seconds.
        let mut rejected = batch.rejected.clone();
        let mut in_scope: HashMap<i64, bool> = HashMap::new();
        let organisations: std::collections::BTreeSet<i64> =
            batch.rows.iter().map(|(_, d)| d.organisation_id).collect();
        for organisation_id in organisations {
            let path: Option<String> = with_pool!(self, pool => {
                sqlx::query_scalar("SELECT path FROM organisations WHERE id = $1")
                    .bind(organisation_id)
                    .fetch_optional(pool)
                    .await?
            });
            in_scope.insert(
                organisation_id,
                path.as_deref().is_some_and(|p| scope.contains(p)),
            );
        }
        let serials: Vec<&str> = batch.rows.iter().map(|(_, d)| d.serial.as_str()).collect();
        let macs: Vec<&str> = batch.rows.iter().map(|(_, d)| d.mac.as_str()).collect();
        let taken_serials = self.existing_values("serial", &serials).await?;
        let taken_macs = self.existing_values("mac", &macs).await?;
        let mut accepted = Vec::with_capacity(batch.rows.len());
        for (line, device) in &batch.rows {
            // A rejection repeats only what the row itself says: nothing of
            // the device or organisation (maybe another tenant's) it met.
            let reason = if !in_scope
                .get(&device.organisation_id)
                .copied()
                .unwrap_or(false)
            {
                Some(format!("organisation {} not found", device.organisation_id))
            } else if taken_serials.contains(&device.serial) {
                Some(format!("serial {} is already registered", device.serial))
            } else if taken_macs.contains(&device.mac) {
                Some(format!("MAC {} is already registered", device.mac))
            } else {
                None
            };
            match reason {
                Some(reason) => rejected.push(Rejection {
                    line: *line,
                    reason,
                }),
                None => accepted.push(device),
            }
        }
        rejected.sort_by_key(|r| r.line);
        let write = batch.partial || rejected.is_empty();
        let written = if write { accepted.len() as i64 } else { 0 };
        let record = with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            if write {
                for chunk in accepted.chunks(ROWS_PER_STATEMENT) {
                    let mut q = sqlx::QueryBuilder::new(
                        "INSERT INTO devices (organisation_id, model_id, name, serial, mac, imei, iccid, labels, license_state, created_at) ",
                    );
                    q.push_values(chunk, |mut row, d| {
                        row.push_bind(d.organisation_id)
                            .push_bind(d.model_id)
                            .push_bind(&d.name)
                            .push_bind(&d.serial)
                            .push_bind(&d.mac)
                            .push_bind(&d.imei)
                            .push_bind(&d.iccid)
                            .push_bind(d.labels.join(","))
                            .push_bind("unlicensed")
                            .push_bind(created_at);
                    });
                    // Another import that registered one of these since the
                    // check fails this one whole: nothing half-written.
                    q.build().execute(&mut *tx).await.map_err(|e| match StoreError::from(e) {
                        StoreError::Conflict(_) => StoreError::Conflict(
                            "a device of this import, registered by another import meanwhile; run it again to see which,".into(),
                        ),
                        other => other,
                    })?;
                }
            }
            let record = write_record!(tx, scope, batch, ImportKind::Devices, written, rejected, created_at);
            tx.commit().await?;
            record
        });
        Ok(record)
    }

    /// Which of `values` a device already has in `column` (`serial` or
    /// `mac`), looked up a chunk at a time.
    async fn existing_values(
        &self,
        column: &'static str,
        values: &[&str],
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        let mut found = std::collections::HashSet::new();
        for chunk in values.chunks(ROWS_PER_STATEMENT) {
            let rows: Vec<String> = with_pool!(self, pool => {
                let mut q = sqlx::QueryBuilder::new(format!("SELECT {column} FROM devices WHERE {column} IN ("));
                let mut list = q.separated(", ");
                for value in chunk {
                    list.push_bind(*value);
                }
                q.push(")");
                q.build_query_scalar().fetch_all(pool).await?
            });
            found.extend(rows);
        }
        Ok(found)
    }

    /// One import record with its rejections, if made inside `scope`.
    pub async fn import_record(&self, scope: &Scope, id: i64) -> Result<ImportRecord, StoreError> {
        let (row, rejections): (Option<ImportRow>, Vec<Rejection>) = with_pool!(self, pool => {
            let row: Option<ImportRow> = sqlx::query_as(&format!(
                "SELECT {RECORD_COLUMNS} FROM device_imports i JOIN organisations o ON o.id = i.organisation_id \
                 WHERE i.id = $1 AND o.path LIKE $2"
            ))
            .bind(id)
            .bind(scope.pattern())
            .fetch_optional(pool)
            .await?;
            let rejections = sqlx::query_as("SELECT line, reason FROM device_import_rejections WHERE import_id = $1 ORDER BY line")
                .bind(id)
                .fetch_all(pool)
                .await?;
            (row, rejections)
        });
        let row = row.ok_or_else(|| StoreError::NotFound(format!("import {id}")))?;
        Ok(row.into_record(rejections))
    }
}
