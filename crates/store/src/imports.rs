//! Device import batches and their records: who imported what, when, from
//! which file, what was accepted and what was rejected on which line.

use std::collections::HashMap;

use crate::devices::{INSERT_DEVICE, bind_new_device};
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
pub struct ImportBatch {
    pub actor: String,
    pub source_name: String,
    /// Accept the good rows even when some are rejected; otherwise all or nothing.
    pub partial: bool,
    pub rows: Vec<(i64, NewDevice)>,
    pub rejected: Vec<Rejection>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportRecord {
    pub id: i64,
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
    organisation_id: i64,
    actor: String,
    source_name: String,
    partial: bool,
    rows_accepted: i64,
    rows_rejected: i64,
    created_at: i64,
}

impl Store {
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
        let record = with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let mut rejected = batch.rejected.clone();
            let mut in_scope: HashMap<i64, bool> = HashMap::new();
            let mut accepted = Vec::with_capacity(batch.rows.len());
            for (line, device) in &batch.rows {
                let allowed = match in_scope.get(&device.organisation_id) {
                    Some(allowed) => *allowed,
                    None => {
                        let path: Option<String> = sqlx::query_scalar("SELECT path FROM organisations WHERE id = $1")
                            .bind(device.organisation_id)
                            .fetch_optional(&mut *tx)
                            .await?;
                        let allowed = path.as_deref().is_some_and(|p| scope.contains(p));
                        in_scope.insert(device.organisation_id, allowed);
                        allowed
                    }
                };
                if !allowed {
                    rejected.push(Rejection { line: *line, reason: format!("organisation {} not found", device.organisation_id) });
                    continue;
                }
                let taken: Option<String> = sqlx::query_scalar(
                    "SELECT CASE WHEN serial = $1 THEN 'serial' ELSE 'MAC' END FROM devices WHERE serial = $1 OR mac = $2 LIMIT 1",
                )
                .bind(&device.serial)
                .bind(&device.mac)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(what) = taken {
                    let value = if what == "serial" { &device.serial } else { &device.mac };
                    rejected.push(Rejection { line: *line, reason: format!("{what} {value} is already registered") });
                    continue;
                }
                accepted.push((*line, device));
            }
            rejected.sort_by_key(|r| r.line);
            let write = batch.partial || rejected.is_empty();
            let mut written = 0i64;
            if write {
                for (_, device) in &accepted {
                    bind_new_device!(sqlx::query(INSERT_DEVICE), device, created_at)
                    .execute(&mut *tx)
                    .await?;
                    written += 1;
                }
            }
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO device_imports (organisation_id, actor, source_name, partial, rows_accepted, rows_rejected, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            )
            .bind(scope.organisation_id)
            .bind(&batch.actor)
            .bind(&batch.source_name)
            .bind(batch.partial)
            .bind(written)
            .bind(rejected.len() as i64)
            .bind(created_at)
            .fetch_one(&mut *tx)
            .await?;
            for r in &rejected {
                sqlx::query("INSERT INTO device_import_rejections (import_id, line, reason) VALUES ($1, $2, $3)")
                    .bind(id)
                    .bind(r.line)
                    .bind(&r.reason)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            ImportRecord {
                id,
                organisation_id: scope.organisation_id,
                actor: batch.actor.clone(),
                source_name: batch.source_name.clone(),
                partial: batch.partial,
                rows_accepted: written,
                rows_rejected: rejected.len() as i64,
                created_at,
                rejections: rejected,
            }
        });
        Ok(record)
    }

    /// One import record with its rejections, if made inside `scope`.
    pub async fn import_record(&self, scope: &Scope, id: i64) -> Result<ImportRecord, StoreError> {
        let (row, rejections): (Option<ImportRow>, Vec<Rejection>) = with_pool!(self, pool => {
            let row: Option<ImportRow> = sqlx::query_as(
                "SELECT i.id, i.organisation_id, i.actor, i.source_name, i.partial, i.rows_accepted, i.rows_rejected, i.created_at \
                 FROM device_imports i JOIN organisations o ON o.id = i.organisation_id WHERE i.id = $1 AND o.path LIKE $2",
            )
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
        Ok(ImportRecord {
            id: row.id,
            organisation_id: row.organisation_id,
            actor: row.actor,
            source_name: row.source_name,
            partial: row.partial,
            rows_accepted: row.rows_accepted,
            rows_rejected: row.rows_rejected,
            created_at: row.created_at,
            rejections,
        })
    }
}
