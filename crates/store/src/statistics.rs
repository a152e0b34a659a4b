//! Counters of an organisation's subtree, and their daily snapshots.

use crate::{OrganisationKind, Scope, Store, StoreError, now_millis, with_pool};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct Counters {
    pub devices: i64,
    pub online_devices: i64,
    pub users: i64,
    pub integrators: i64,
    pub customers: i64,
    pub license_keys: i64,
}

/// Today's UTC day number.
pub fn today() -> i64 {
    now_millis().div_euclid(86_400_000)
}

impl Store {
    /// The counters of `scope` now.
    pub async fn counters(&self, scope: &Scope) -> Result<Counters, StoreError> {
        let orgs = self.organisations(scope).await?;
        let count = |kind| orgs.iter().filter(|o| o.kind == kind).count() as i64;
        Ok(Counters {
            devices: self.count_devices(scope).await?,
            online_devices: self.count_online_devices(scope).await?,
            users: self.count_users(scope).await?,
            integrators: count(OrganisationKind::Integrator),
            customers: count(OrganisationKind::Customer),
            license_keys: self.count_license_keys(scope).await?,
        })
    }

    /// Stores (or replaces) the snapshot of `scope` for `day`.
    pub async fn save_daily_counters(
        &self,
        scope: &Scope,
        day: i64,
        c: &Counters,
    ) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO daily_statistics (organisation_id, day, devices, online_devices, users, integrators, customers, \
                 license_keys) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (organisation_id, day) DO UPDATE SET \
                 devices = excluded.devices, online_devices = excluded.online_devices, users = excluded.users, \
                 integrators = excluded.integrators, customers = excluded.customers, license_keys = excluded.license_keys",
            )
            .bind(scope.organisation_id)
            .bind(day)
            .bind(c.devices)
            .bind(c.online_devices)
            .bind(c.users)
            .bind(c.integrators)
            .bind(c.customers)
            .bind(c.license_keys)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// The snapshot of `scope` for `day`, if one was taken.
    pub async fn daily_counters(
        &self,
        scope: &Scope,
        day: i64,
    ) -> Result<Option<Counters>, StoreError> {
        let row = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT devices, online_devices, users, integrators, customers, license_keys FROM daily_statistics \
                 WHERE organisation_id = $1 AND day = $2",
            )
            .bind(scope.organisation_id)
            .bind(day)
            .fetch_optional(pool)
            .await?
        });
        Ok(row)
    }

    /// The snapshots of `scope` from `first_day` on, oldest first.
    pub async fn daily_counters_since(
        &self,
        scope: &Scope,
        first_day: i64,
    ) -> Result<Vec<(i64, Counters)>, StoreError> {
        #[derive(sqlx::FromRow)]
        struct Row {
            day: i64,
            #[sqlx(flatten)]
            counters: Counters,
        }
        let rows: Vec<Row> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT day, devices, online_devices, users, integrators, customers, license_keys FROM daily_statistics \
                 WHERE organisation_id = $1 AND day >= $2 ORDER BY day",
            )
            .bind(scope.organisation_id)
            .bind(first_day)
            .fetch_all(pool)
            .await?
        });
        Ok(rows.into_iter().map(|r| (r.day, r.counters)).collect())
    }

    /// Snapshots every organisation for today (the daily job).
    pub async fn snapshot_all(&self) -> Result<usize, StoreError> {
        let ids: Vec<i64> = with_pool!(self, pool => {
            sqlx::query_scalar("SELECT id FROM organisations").fetch_all(pool).await?
        });
        let day = today();
        for id in &ids {
            let scope = self.scope_of(*id).await?;
            let counters = self.counters(&scope).await?;
            self.save_daily_counters(&scope, day, &counters).await?;
        }
        Ok(ids.len())
    }
}
