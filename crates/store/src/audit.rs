//! The system log: one row per change, kept in the organisation where the
//! change happened, read through a scope like everything else.

use crate::{Scope, Store, StoreError, now_millis, with_pool};

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AuditEntry {
    pub id: i64,
    pub organisation_id: i64,
    pub actor: String,
    /// e.g. `organisation.create`, `device.import`, `device.credentials`.
    pub action: String,
    /// What was changed, e.g. `organisation 7`.
    pub target: String,
    pub before_value: Option<String>,
    pub after_value: Option<String>,
    /// The client's address, when known.
    pub address: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewAuditEntry {
    pub organisation_id: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub before_value: Option<String>,
    pub after_value: Option<String>,
    pub address: Option<String>,
}

/// A page of the log, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Prefix of actor, action or target.
    pub search: Option<String>,
    /// Keyset pagination: entries older than this id.
    pub before_id: Option<i64>,
    pub limit: u32,
}

impl Store {
    pub async fn record_audit(&self, entry: &NewAuditEntry) -> Result<(), StoreError> {
        let now = now_millis();
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO audit_log (organisation_id, actor, action, target, before_value, after_value, address, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(entry.organisation_id)
            .bind(&entry.actor)
            .bind(&entry.action)
            .bind(&entry.target)
            .bind(&entry.before_value)
            .bind(&entry.after_value)
            .bind(&entry.address)
            .bind(now)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Entries of organisations in `scope`, newest first.
    /// Several entries in one statement (a bulk job's results).
    pub async fn record_audits(&self, entries: &[NewAuditEntry]) -> Result<(), StoreError> {
        let now = now_millis();
        for chunk in entries.chunks(500) {
            with_pool!(self, pool => {
                let mut q = sqlx::QueryBuilder::new(
                    "INSERT INTO audit_log (organisation_id, actor, action, target, before_value, after_value, address, created_at) ",
                );
                q.push_values(chunk, |mut row, e| {
                    row.push_bind(e.organisation_id)
                        .push_bind(e.actor.clone())
                        .push_bind(e.action.clone())
                        .push_bind(e.target.clone())
                        .push_bind(e.before_value.clone())
                        .push_bind(e.after_value.clone())
                        .push_bind(e.address.clone())
                        .push_bind(now);
                });
                q.build().execute(pool).await?;
            });
        }
        Ok(())
    }

    pub async fn audit_log(
        &self,
        scope: &Scope,
        query: &AuditQuery,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let limit = i64::from(query.limit.clamp(1, 10_000));
        let rows = with_pool!(self, pool => {
            let mut q = sqlx::QueryBuilder::new(
                "SELECT a.id, a.organisation_id, a.actor, a.action, a.target, a.before_value, a.after_value, a.address, a.created_at \
                 FROM audit_log a JOIN organisations o ON o.id = a.organisation_id WHERE o.path LIKE ",
            );
            q.push_bind(scope.pattern());
            if let Some(before) = query.before_id {
                q.push(" AND a.id < ").push_bind(before);
            }
            if let Some(search) = query.search.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
                // Anywhere in who, what or which: "Weak LTE" finds the rule's entries.
                let pattern = format!("%{}%", crate::like_literal(search));
                q.push(" AND (a.actor LIKE ").push_bind(pattern.clone());
                q.push(" ESCAPE '\\' OR a.action LIKE ").push_bind(pattern.clone());
                q.push(" ESCAPE '\\' OR a.target LIKE ").push_bind(pattern);
                q.push(" ESCAPE '\\')");
            }
            q.push(" ORDER BY a.id DESC LIMIT ").push_bind(limit);
            q.build_query_as().fetch_all(pool).await?
        });
        Ok(rows)
    }
}
