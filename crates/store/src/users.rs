//! Users and their login sessions. Passwords arrive hashed (the platform
//! hashes them); session tokens arrive as digests.

use crate::BeginWrite;
use crate::{Scope, Store, StoreError, now_millis, with_pool};

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct User {
    pub id: i64,
    pub organisation_id: i64,
    pub username: String,
    pub password_hash: String,
    /// `operator-admin`, `integrator-admin`, `customer-admin`, `engineer` or `viewer`.
    pub role: String,
    pub disabled: bool,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    pub organisation_id: i64,
    pub username: String,
    pub password_hash: String,
    pub role: String,
}

const USER_COLUMNS: &str =
    "u.id, u.organisation_id, u.username, u.password_hash, u.role, u.disabled, u.created_at";

impl Store {
    /// Creates a user in an organisation inside `scope`.
    pub async fn create_user(&self, scope: &Scope, user: &NewUser) -> Result<User, StoreError> {
        self.organisation(scope, user.organisation_id).await?;
        let created_at = now_millis();
        let row = with_pool!(self, pool => {
            sqlx::query_as(
                "INSERT INTO users (organisation_id, username, password_hash, role, disabled, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 RETURNING id, organisation_id, username, password_hash, role, disabled, created_at",
            )
            .bind(user.organisation_id)
            .bind(&user.username)
            .bind(&user.password_hash)
            .bind(&user.role)
            .bind(false)
            .bind(created_at)
            .fetch_one(pool)
            .await
            .map_err(|e| match StoreError::from(e) {
                StoreError::Conflict(_) => StoreError::Conflict(format!("user {:?}", user.username)),
                other => other,
            })?
        });
        Ok(row)
    }

    /// The user who logs in with `username`, whatever their organisation.
    pub async fn user_by_username(&self, username: &str) -> Result<Option<User>, StoreError> {
        let row = with_pool!(self, pool => {
            sqlx::query_as(&format!("SELECT {USER_COLUMNS} FROM users u WHERE u.username = $1"))
                .bind(username)
                .fetch_optional(pool)
                .await?
        });
        Ok(row)
    }

    /// Users in `scope`.
    pub async fn users(&self, scope: &Scope) -> Result<Vec<User>, StoreError> {
        let rows = with_pool!(self, pool => {
            sqlx::query_as(&format!(
                "SELECT {USER_COLUMNS} FROM users u JOIN organisations o ON o.id = u.organisation_id \
                 WHERE o.path LIKE $1 ORDER BY u.username"
            ))
            .bind(scope.pattern())
            .fetch_all(pool)
            .await?
        });
        Ok(rows)
    }

    pub async fn count_users(&self, scope: &Scope) -> Result<i64, StoreError> {
        let n: i64 = with_pool!(self, pool => {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM users u JOIN organisations o ON o.id = u.organisation_id WHERE o.path LIKE $1",
            )
            .bind(scope.pattern())
            .fetch_one(pool)
            .await?
        });
        Ok(n)
    }

    /// One user, if in `scope`.
    pub async fn user(&self, scope: &Scope, id: i64) -> Result<User, StoreError> {
        let row: Option<User> = with_pool!(self, pool => {
            sqlx::query_as(&format!(
                "SELECT {USER_COLUMNS} FROM users u JOIN organisations o ON o.id = u.organisation_id \
                 WHERE u.id = $1 AND o.path LIKE $2"
            ))
            .bind(id)
            .bind(scope.pattern())
            .fetch_optional(pool)
            .await?
        });
        row.ok_or_else(|| StoreError::NotFound(format!("user {id}")))
    }

    /// Disables or enables a user in `scope`; a disabled user's sessions end
    /// and API tokens are revoked (enabling again brings neither back).
    pub async fn set_user_disabled(
        &self,
        scope: &Scope,
        id: i64,
        disabled: bool,
    ) -> Result<(), StoreError> {
        self.user(scope, id).await?;
        with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query("UPDATE users SET disabled = $1 WHERE id = $2")
                .bind(disabled)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            if disabled {
                sqlx::query("DELETE FROM sessions WHERE user_id = $1").bind(id).execute(&mut *tx).await?;
                sqlx::query("UPDATE api_tokens SET revoked = $1 WHERE user_id = $2")
                    .bind(true)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Sets a new password hash; every session of the user but `keep_session`
    /// (the one that changed it, by token hash) ends, and every API token is
    /// revoked: whoever held the old password holds nothing now.
    pub async fn set_password_hash(
        &self,
        user_id: i64,
        password_hash: &str,
        keep_session: Option<&str>,
    ) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
                .bind(password_hash)
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM sessions WHERE user_id = $1 AND token_hash <> $2")
                .bind(user_id)
                .bind(keep_session.unwrap_or(""))
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE api_tokens SET revoked = $1 WHERE user_id = $2")
                .bind(true)
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    pub async fn create_session(
        &self,
        user_id: i64,
        token_hash: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let created_at = now_millis();
        with_pool!(self, pool => {
            sqlx::query("INSERT INTO sessions (token_hash, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)")
                .bind(token_hash)
                .bind(user_id)
                .bind(created_at)
                .bind(expires_at)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// The enabled user a live session belongs to.
    pub async fn session_user(&self, token_hash: &str) -> Result<Option<User>, StoreError> {
        let now = now_millis();
        let row = with_pool!(self, pool => {
            sqlx::query_as(&format!(
                "SELECT {USER_COLUMNS} FROM sessions s JOIN users u ON u.id = s.user_id \
                 WHERE s.token_hash = $1 AND s.expires_at > $2 AND u.disabled = $3"
            ))
            .bind(token_hash)
            .bind(now)
            .bind(false)
            .fetch_optional(pool)
            .await?
        });
        Ok(row)
    }

    pub async fn delete_session(&self, token_hash: &str) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
                .bind(token_hash)
                .execute(pool)
                .await?;
        });
        Ok(())
    }
}

/// A long-lived API token (its secret is never stored).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ApiToken {
    pub id: i64,
    pub user_id: i64,
    pub name: String,
    pub revoked: bool,
    pub created_at: i64,
    /// When it stops working (milliseconds); None: until revoked.
    pub expires_at: Option<i64>,
}

impl Store {
    pub async fn create_api_token(
        &self,
        user_id: i64,
        name: &str,
        token_sha256: &str,
        expires_at: Option<i64>,
    ) -> Result<ApiToken, StoreError> {
        let now = now_millis();
        let row = with_pool!(self, pool => {
            sqlx::query_as(
                "INSERT INTO api_tokens (user_id, name, token_sha256, revoked, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6) \
                 RETURNING id, user_id, name, revoked, created_at, expires_at",
            )
            .bind(user_id)
            .bind(name)
            .bind(token_sha256)
            .bind(false)
            .bind(now)
            .bind(expires_at)
            .fetch_one(pool)
            .await?
        });
        Ok(row)
    }

    pub async fn api_tokens(&self, user_id: i64) -> Result<Vec<ApiToken>, StoreError> {
        let rows = with_pool!(self, pool => {
            sqlx::query_as("SELECT id, user_id, name, revoked, created_at, expires_at FROM api_tokens WHERE user_id = $1 ORDER BY id")
                .bind(user_id)
                .fetch_all(pool)
                .await?
        });
        Ok(rows)
    }

    /// Revokes one of the user's tokens; false when it has none by that id.
    pub async fn revoke_api_token(&self, user_id: i64, id: i64) -> Result<bool, StoreError> {
        let done = with_pool!(self, pool => {
            sqlx::query("UPDATE api_tokens SET revoked = $1 WHERE id = $2 AND user_id = $3")
                .bind(true)
                .bind(id)
                .bind(user_id)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(done == 1)
    }

    /// The enabled user a live (unrevoked, unexpired) API token belongs to.
    pub async fn api_token_user(&self, token_sha256: &str) -> Result<Option<User>, StoreError> {
        let row = with_pool!(self, pool => {
            sqlx::query_as(&format!(
                "SELECT {USER_COLUMNS} FROM api_tokens t JOIN users u ON u.id = t.user_id \
                 WHERE t.token_sha256 = $1 AND t.revoked = $2 AND u.disabled = $2 \
                 AND (t.expires_at IS NULL OR t.expires_at > $3)"
            ))
            .bind(token_sha256)
            .bind(false)
            .bind(now_millis())
            .fetch_optional(pool)
            .await?
        });
        Ok(row)
    }
}
