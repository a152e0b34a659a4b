//! Service models and license keys, and the platform's own secrets.

use crate::BeginWrite;
use crate::{Scope, Store, StoreError, now_millis, with_pool};
use crate::{SecretKey, SecretKeyring};

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ServiceModel {
    pub id: i64,
    pub name: String,
    /// Comma-separated feature names.
    pub features: String,
    pub duration_days: i64,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LicenseKey {
    pub id: i64,
    pub license_key: String,
    pub organisation_id: i64,
    pub service_model_id: i64,
    /// `available`, `bound`, `deployed`, `revoked` (expiry is read from `expires_at`).
    pub state: String,
    pub device_id: Option<i64>,
    pub token: Option<String>,
    pub created_at: i64,
    pub bound_at: Option<i64>,
    pub expires_at: Option<i64>,
}

/// A page of license keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LicenseQuery {
    pub state: Option<String>,
    pub service_model_id: Option<i64>,
    pub after_id: Option<i64>,
    pub limit: u32,
}

const KEY_COLUMNS: &str = "k.id, k.license_key, k.organisation_id, k.service_model_id, k.state, k.device_id, k.token, \
     k.created_at, k.bound_at, k.expires_at";

impl Store {
    pub async fn create_service_model(
        &self,
        name: &str,
        features: &[String],
        duration_days: i64,
    ) -> Result<ServiceModel, StoreError> {
        let now = now_millis();
        let row = with_pool!(self, pool => {
            sqlx::query_as(
                "INSERT INTO service_models (name, features, duration_days, created_at) VALUES ($1, $2, $3, $4) \
                 RETURNING id, name, features, duration_days, created_at",
            )
            .bind(name)
            .bind(features.join(","))
            .bind(duration_days)
            .bind(now)
            .fetch_one(pool)
            .await
            .map_err(|e| match StoreError::from(e) {
                StoreError::Conflict(_) => StoreError::Conflict(format!("service model {name:?}")),
                other => other,
            })?
        });
        Ok(row)
    }

    pub async fn service_models(&self) -> Result<Vec<ServiceModel>, StoreError> {
        let rows = with_pool!(self, pool => {
            sqlx::query_as("SELECT id, name, features, duration_days, created_at FROM service_models ORDER BY name")
                .fetch_all(pool)
                .await?
        });
        Ok(rows)
    }

    pub async fn service_model(&self, id: i64) -> Result<ServiceModel, StoreError> {
        let row: Option<ServiceModel> = with_pool!(self, pool => {
            sqlx::query_as("SELECT id, name, features, duration_days, created_at FROM service_models WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?
        });
        row.ok_or_else(|| StoreError::NotFound(format!("service model {id}")))
    }

    /// Adds `available` keys owned by an organisation inside `scope`.
    pub async fn insert_license_keys(
        &self,
        scope: &Scope,
        organisation_id: i64,
        service_model_id: i64,
        keys: &[String],
    ) -> Result<Vec<LicenseKey>, StoreError> {
        self.organisation(scope, organisation_id).await?;
        self.service_model(service_model_id).await?;
        let now = now_millis();
        let rows = with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let mut rows = Vec::with_capacity(keys.len());
            for key in keys {
                let row: LicenseKey = sqlx::query_as(
                    "INSERT INTO license_keys (license_key, organisation_id, service_model_id, state, created_at) \
                     VALUES ($1, $2, $3, 'available', $4) RETURNING id, license_key, organisation_id, service_model_id, \
                     state, device_id, token, created_at, bound_at, expires_at",
                )
                .bind(key)
                .bind(organisation_id)
                .bind(service_model_id)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                rows.push(row);
            }
            tx.commit().await?;
            rows
        });
        Ok(rows)
    }

    pub async fn license_key(&self, scope: &Scope, id: i64) -> Result<LicenseKey, StoreError> {
        let row: Option<LicenseKey> = with_pool!(self, pool => {
            sqlx::query_as(&format!(
                "SELECT {KEY_COLUMNS} FROM license_keys k JOIN organisations o ON o.id = k.organisation_id \
                 WHERE k.id = $1 AND o.path LIKE $2"
            ))
            .bind(id)
            .bind(scope.pattern())
            .fetch_optional(pool)
            .await?
        });
        row.ok_or_else(|| StoreError::NotFound(format!("license key {id}")))
    }

    pub async fn license_keys(
        &self,
        scope: &Scope,
        query: &LicenseQuery,
    ) -> Result<Vec<LicenseKey>, StoreError> {
        let limit = i64::from(query.limit.clamp(1, 1000));
        let rows = with_pool!(self, pool => {
            let mut q = sqlx::QueryBuilder::new(format!(
                "SELECT {KEY_COLUMNS} FROM license_keys k JOIN organisations o ON o.id = k.organisation_id WHERE o.path LIKE "
            ));
            q.push_bind(scope.pattern());
            if let Some(state) = &query.state {
                q.push(" AND k.state = ").push_bind(state.clone());
            }
            if let Some(model) = query.service_model_id {
                q.push(" AND k.service_model_id = ").push_bind(model);
            }
            if let Some(after) = query.after_id {
                q.push(" AND k.id > ").push_bind(after);
            }
            q.push(" ORDER BY k.id LIMIT ").push_bind(limit);
            q.build_query_as().fetch_all(pool).await?
        });
        Ok(rows)
    }

    /// License keys owned in `scope`, whatever their state.
    pub async fn count_license_keys(&self, scope: &Scope) -> Result<i64, StoreError> {
        let n: i64 = with_pool!(self, pool => {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM license_keys k JOIN organisations o ON o.id = k.organisation_id WHERE o.path LIKE $1",
            )
            .bind(scope.pattern())
            .fetch_one(pool)
            .await?
        });
        Ok(n)
    }

    /// The license currently bound or deployed on a device.
    pub async fn license_of_device(
        &self,
        device_id: i64,
    ) -> Result<Option<LicenseKey>, StoreError> {
        let row = with_pool!(self, pool => {
            sqlx::query_as(&format!(
                "SELECT {KEY_COLUMNS} FROM license_keys k WHERE k.device_id = $1 AND k.state IN ('bound', 'deployed')"
            ))
            .bind(device_id)
            .fetch_optional(pool)
            .await?
        });
        Ok(row)
    }

    /// Writes a key's new state, device, token and times; the device's
    /// license state follows.
    /// A bound key whose device confirmed it holds the token: `deployed`.
    pub async fn mark_license_deployed(
        &self,
        key: &str,
        device_id: i64,
    ) -> Result<bool, StoreError> {
        with_pool!(self, pool => {
            let done = sqlx::query(
                "UPDATE license_keys SET state = 'deployed' WHERE license_key = $1 AND device_id = $2 AND state = 'bound'",
            )
            .bind(key)
            .bind(device_id)
            .execute(pool)
            .await?
            .rows_affected();
            Ok(done == 1)
        })
    }

    pub async fn update_license(&self, key: &LicenseKey) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let previous: Option<i64> = sqlx::query_scalar("SELECT device_id FROM license_keys WHERE id = $1")
                .bind(key.id)
                .fetch_one(&mut *tx)
                .await?;
            sqlx::query(
                "UPDATE license_keys SET state = $1, device_id = $2, token = $3, bound_at = $4, expires_at = $5 WHERE id = $6",
            )
            .bind(&key.state)
            .bind(key.device_id)
            .bind(&key.token)
            .bind(key.bound_at)
            .bind(key.expires_at)
            .bind(key.id)
            .execute(&mut *tx)
            .await?;
            if let Some(old) = previous.filter(|old| Some(*old) != key.device_id) {
                sqlx::query("UPDATE devices SET license_state = 'unlicensed' WHERE id = $1")
                    .bind(old)
                    .execute(&mut *tx)
                    .await?;
            }
            if let Some(device) = key.device_id {
                sqlx::query("UPDATE devices SET license_state = $1 WHERE id = $2")
                    .bind(&key.state)
                    .bind(device)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// A secret the platform makes for itself once, by name: made by `make`
    /// the first time (by whichever instance gets there first), sealed
    /// with the store's key, opened for the caller. A value stored in the
    /// clear by an earlier version is sealed on first read.
    pub async fn platform_secret(
        &self,
        name: &str,
        make: impl FnOnce() -> String,
    ) -> Result<String, StoreError> {
        let keyring = self.keyring()?;
        // Made (a device CA is a key pair) only when there is none yet.
        if let Some(existing) = self.existing_platform_secret(name).await? {
            return Ok(existing);
        }
        let sealed = keyring.seal(name, &make());
        let stored: String = with_pool!(self, pool => {
            sqlx::query("INSERT INTO platform_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
                .bind(name)
                .bind(&sealed)
                .execute(pool)
                .await?;
            sqlx::query_scalar("SELECT value FROM platform_secrets WHERE name = $1")
                .bind(name)
                .fetch_one(pool)
                .await?
        });
        if SecretKeyring::is_sealed(&stored) {
            return keyring.open(name, &stored);
        }
        self.reseal_plaintext(name, &stored).await?;
        Ok(stored)
    }

    /// Seals a secret an earlier version stored in the clear.
    async fn reseal_plaintext(&self, name: &str, plain: &str) -> Result<(), StoreError> {
        let resealed = self.keyring()?.seal(name, plain);
        with_pool!(self, pool => {
            sqlx::query("UPDATE platform_secrets SET value = $1 WHERE name = $2 AND value = $3")
                .bind(&resealed)
                .bind(name)
                .bind(plain)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// A platform secret if it was made, opened; never makes one.
    pub async fn existing_platform_secret(&self, name: &str) -> Result<Option<String>, StoreError> {
        let stored: Option<String> = with_pool!(self, pool => {
            sqlx::query_scalar("SELECT value FROM platform_secrets WHERE name = $1")
                .bind(name)
                .fetch_optional(pool)
                .await?
        });
        match stored {
            Some(value) if SecretKeyring::is_sealed(&value) => {
                Ok(Some(self.keyring()?.open(name, &value)?))
            }
            Some(plain) => {
                self.reseal_plaintext(name, &plain).await?;
                Ok(Some(plain))
            }
            None => Ok(None),
        }
    }

    /// Seals every platform secret and webhook secret with `new` and makes
    /// it the store's key; the old key stays in the ring. All or nothing;
    /// returns how many.
    pub async fn rotate_secret_key(&self, new: SecretKey) -> Result<usize, StoreError> {
        let old = self.keyring()?;
        let rotated = SecretKeyring::new(new).with_previous(old.current().clone());
        let n = with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let rows: Vec<(String, String)> = sqlx::query_as("SELECT name, value FROM platform_secrets")
                .fetch_all(&mut *tx)
                .await?;
            for (name, value) in &rows {
                let plain = if SecretKeyring::is_sealed(value) {
                    old.open(name, value)?
                } else {
                    value.clone()
                };
                sqlx::query("UPDATE platform_secrets SET value = $1 WHERE name = $2")
                    .bind(rotated.seal(name, &plain))
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
            }
            // Webhook signing secrets are sealed with the same key.
            let hooks: Vec<(i64, String)> = sqlx::query_as("SELECT id, secret FROM webhooks")
                .fetch_all(&mut *tx)
                .await?;
            for (id, value) in &hooks {
                let plain = if SecretKeyring::is_sealed(value) {
                    old.open(crate::alarms::WEBHOOK_SECRET, value)?
                } else {
                    value.clone()
                };
                sqlx::query("UPDATE webhooks SET secret = $1 WHERE id = $2")
                    .bind(rotated.seal(crate::alarms::WEBHOOK_SECRET, &plain))
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            rows.len() + hooks.len()
        });
        self.set_keyring(rotated);
        Ok(n)
    }
}
