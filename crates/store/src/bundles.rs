//! Black-box bundles: one upload slot per `black_box` execution, opened by a
//! one-time token whose SHA-256 alone is stored, and the bundle once it
//! arrived (its bytes are a file the platform keeps by the row's id).

use crate::{Scope, Store, StoreError, now_millis, with_pool};

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Bundle {
    pub id: i64,
    pub device_id: i64,
    pub execution_id: i64,
    /// `waiting` or `received`.
    pub state: String,
    pub size: Option<i64>,
    pub sha256: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub received_at: Option<i64>,
}

const COLUMNS: &str = "b.id, b.device_id, b.execution_id, b.state, b.size, b.sha256, b.created_at, b.expires_at, b.received_at";

impl Store {
    /// Opens the upload slot of a `black_box` execution.
    pub async fn open_bundle_slot(
        &self,
        device_id: i64,
        execution_id: i64,
        token_sha256: &str,
        expires_at: i64,
    ) -> Result<i64, StoreError> {
        with_pool!(self, pool => {
            Ok(sqlx::query_scalar(
                "INSERT INTO black_box_bundles (device_id, execution_id, token_sha256, state, created_at, expires_at) \
                 VALUES ($1, $2, $3, 'waiting', $4, $5) RETURNING id",
            )
            .bind(device_id)
            .bind(execution_id)
            .bind(token_sha256)
            .bind(now_millis())
            .bind(expires_at)
            .fetch_one(pool)
            .await?)
        })
    }

    /// The slot a token opens: waiting and not expired.
    pub async fn bundle_slot(&self, token_sha256: &str) -> Result<Option<Bundle>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM black_box_bundles b WHERE b.token_sha256 = $1 AND b.state = 'waiting' AND b.expires_at > $2"
        );
        with_pool!(self, pool => {
            Ok(sqlx::query_as(&sql).bind(token_sha256).bind(now_millis()).fetch_optional(pool).await?)
        })
    }

    /// Marks a slot received; false if it was used meanwhile.
    pub async fn receive_bundle(
        &self,
        id: i64,
        size: i64,
        sha256: &str,
    ) -> Result<bool, StoreError> {
        with_pool!(self, pool => {
            let done = sqlx::query(
                "UPDATE black_box_bundles SET state = 'received', size = $1, sha256 = $2, received_at = $3 \
                 WHERE id = $4 AND state = 'waiting'",
            )
            .bind(size)
            .bind(sha256)
            .bind(now_millis())
            .bind(id)
            .execute(pool)
            .await?
            .rows_affected();
            Ok(done == 1)
        })
    }

    /// A device's received bundles, newest first.
    pub async fn bundles(&self, scope: &Scope, device_id: i64) -> Result<Vec<Bundle>, StoreError> {
        self.device(scope, device_id).await?;
        let sql = format!(
            "SELECT {COLUMNS} FROM black_box_bundles b WHERE b.device_id = $1 AND b.state = 'received' ORDER BY b.id DESC LIMIT 100"
        );
        with_pool!(self, pool => {
            Ok(sqlx::query_as(&sql).bind(device_id).fetch_all(pool).await?)
        })
    }

    /// One received bundle, if its device is in `scope`.
    pub async fn bundle(&self, scope: &Scope, id: i64) -> Result<Bundle, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM black_box_bundles b JOIN devices d ON d.id = b.device_id \
             JOIN organisations o ON o.id = d.organisation_id \
             WHERE b.id = $1 AND b.state = 'received' AND o.path LIKE $2"
        );
        let found = with_pool!(self, pool => {
            sqlx::query_as::<_, Bundle>(&sql).bind(id).bind(scope.pattern()).fetch_optional(pool).await?
        });
        found.ok_or_else(|| StoreError::NotFound(format!("bundle {id}")))
    }
}
