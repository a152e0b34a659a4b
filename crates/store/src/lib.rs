//! Persistence for the platform: versioned migrations and queries that run
//! unchanged on SQLite (embedded, the default) and PostgreSQL.
//!
//! Every query about tenant data takes a [`Scope`]: the caller's organisation
//! and everything below it. It is an argument of the store, so a handler
//! cannot forget it.

mod alarms;
mod audit;
mod bundles;
mod config;
mod credentials;
mod ddi;
mod devices;
mod firmware;
mod imports;
mod licenses;
mod organisations;
mod radio;
mod sealed;
mod statistics;
mod tasks;
mod telemetry;
mod users;

use std::path::Path;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

/// `text` as a LIKE pattern that matches it literally, for `LIKE … ESCAPE '\'`.
pub(crate) fn like_literal(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

pub use alarms::{Alarm, AlarmQuery, AlarmRule, DeviceContext, NewAlarmRule, Webhook};
pub use audit::{AuditEntry, AuditQuery, NewAuditEntry};
pub use bundles::Bundle;
pub use config::DeviceConfig;
pub use credentials::{DeviceLogin, PresenceChange};
pub use ddi::{DdiAction, DdiDevice};
pub use devices::{
    Device, DeviceCursor, DeviceModel, DevicePage, DeviceQuery, DeviceSort, NewDevice,
    NewDeviceModel,
};
pub use firmware::{
    CAMPAIGN_FINAL_STATES, CAMPAIGN_OPEN_STATES, CampaignDevice, CampaignDeviceChange,
    CampaignWave, FirmwareCampaign, FirmwareHistoryEntry, FirmwareImage, NewCampaign,
    NewFirmwareImage, NewWave, WatchedDevice,
};
pub use imports::{ImportBatch, ImportKind, ImportQuery, ImportRecord, Rejection};
pub use licenses::{LicenseKey, LicenseQuery, ServiceModel};
pub use organisations::{Organisation, OrganisationKind, Scope};
pub use radio::{RadioChange, RadioState};
pub use sealed::{SecretKey, SecretKeyring, key_path, write_key_file};
pub use statistics::{Counters, today};
pub use tasks::{
    ClaimedExecution, ExecutionChange, ExecutionCounts, ExecutionQuery, FINAL_STATES, JobQuery,
    NewTaskJob, OPEN_STATES, OpenExecution, TaskExecution, TaskJob,
};
pub use telemetry::{
    LatestReading, LogLine, LogQuery, NewLogLine, NewReading, SeriesPoint, TelemetryFault,
};
pub use users::{ApiToken, NewUser, User};

/// What went wrong in the store. Unique and scope violations are told apart
/// from database failures so the API can answer 409 or 404.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[source] sqlx::Error),
    #[error("migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("{0} already exists")]
    Conflict(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("unsupported database URL {0:?}: use sqlite:PATH or postgres://…")]
    UnsupportedUrl(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::Conflict(db.constraint().unwrap_or("a unique value").to_owned())
            }
            sqlx::Error::RowNotFound => StoreError::NotFound("row".into()),
            _ => StoreError::Database(e),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// The same SQL on whichever pool the store has. Queries use `$1`-style
/// parameters numbered in order, which both dialects accept.
/// A transaction that will write. On SQLite it takes the write lock at its
/// start (`BEGIN IMMEDIATE`): a deferred transaction that reads first and
/// writes later fails with `SQLITE_BUSY_SNAPSHOT` when another connection
/// (the ingest, say) committed in between, and no busy timeout helps it.
pub(crate) trait BeginWrite {
    type Db: sqlx::Database;
    fn begin_write(
        &self,
    ) -> impl std::future::Future<Output = Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>>
    + Send;
}

impl BeginWrite for SqlitePool {
    type Db = sqlx::Sqlite;
    fn begin_write(
        &self,
    ) -> impl std::future::Future<Output = Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>>
    + Send {
        self.begin_with("BEGIN IMMEDIATE")
    }
}

impl BeginWrite for sqlx::PgPool {
    type Db = sqlx::Postgres;
    fn begin_write(
        &self,
    ) -> impl std::future::Future<Output = Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>>
    + Send {
        self.begin()
    }
}

macro_rules! with_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.pool {
            $crate::Pool::Sqlite($pool) => $body,
            $crate::Pool::Postgres($pool) => $body,
        }
    };
}
pub(crate) use with_pool;

/// The database of one platform.
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) pool: Pool,
    /// SQLite: the one connection telemetry is written through, with the
    /// large page cache the hot end of every device's readings needs. The
    /// general pool hands out its connections in turn, so a cache that size
    /// in each of them would cost eight times the memory.
    telemetry_writer: Option<SqlitePool>,
    /// Metric name → id in `metrics`, learnt as names are first written.
    /// Ids never change, so every clone shares one map for good.
    pub(crate) metric_ids: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, i64>>>,
    /// The key platform secrets are sealed with, shared by every clone.
    pub(crate) keyring: std::sync::Arc<std::sync::RwLock<Option<SecretKeyring>>>,
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

impl Store {
    /// Opens `sqlite:PATH` (created if missing, WAL mode) or `postgres://…`
    /// and runs the migrations that are not applied yet.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let store = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .connect(url)
                .await?;
            Store {
                pool: Pool::Postgres(pool),
                telemetry_writer: None,
                metric_ids: Default::default(),
                keyring: Default::default(),
            }
        } else if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
                .busy_timeout(std::time::Duration::from_secs(30))
                // Checkpoint every ~100 MB of WAL instead of every 4 MB: an
                // ingest flush alone writes more than 4 MB, and each
                // checkpoint copies pages back into the database file.
                .pragma("wal_autocheckpoint", "25000");
            // 8 MiB of page cache per connection (the default is 2 MiB).
            let pool = SqlitePoolOptions::new()
                .max_connections(8)
                .connect_with(options.clone().pragma("cache_size", "-8192"))
                .await?;
            // 64 MiB for the telemetry writer: a flush touches the last page
            // of each device's readings, 40 MB for 10,000 devices. Its
            // commits are synced to disk (FULL): devices are told their
            // readings arrived once the commit returns, so they must survive
            // a power cut, not only the process (NORMAL syncs only at
            // checkpoints). One sync per group commit, not per reading.
            let writer = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(
                    options
                        .pragma("cache_size", "-65536")
                        .synchronous(SqliteSynchronous::Full),
                )
                .await?;
            Store {
                pool: Pool::Sqlite(pool),
                telemetry_writer: Some(writer),
                metric_ids: Default::default(),
                keyring: Default::default(),
            }
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_owned()));
        };
        store.migrate().await?;
        Ok(store)
    }

    /// The embedded database in a data directory, with the data
    /// directory's key (`platform.key`, made on first use) for sealing
    /// platform secrets.
    pub async fn open_data_dir(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Invalid(format!("{}: {e}", dir.display())))?;
        let store = Store::open(&format!("sqlite:{}", dir.join("telemark.db").display())).await?;
        store.set_keyring(SecretKeyring::in_data_dir(dir)?);
        Ok(store)
    }

    /// The key platform secrets are sealed with from now on (in every clone).
    pub fn set_keyring(&self, keyring: SecretKeyring) {
        *self.keyring.write().unwrap_or_else(|p| p.into_inner()) = Some(keyring);
    }

    pub(crate) fn keyring(&self) -> Result<SecretKeyring, StoreError> {
        self.keyring
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| {
                StoreError::Invalid("no secret key: platform secrets cannot be sealed".into())
            })
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        match &self.pool {
            Pool::Sqlite(pool) => SQLITE_MIGRATIONS.run(pool).await?,
            Pool::Postgres(pool) => POSTGRES_MIGRATIONS.run(pool).await?,
        }
        Ok(())
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite(_) => "sqlite",
            Pool::Postgres(_) => "postgres",
        }
    }

    pub async fn close(&self) {
        if let Some(writer) = &self.telemetry_writer {
            writer.close().await;
        }
        with_pool!(self, pool => pool.close().await)
    }

    /// The store telemetry writes go through (see `telemetry_writer`).
    pub(crate) fn telemetry_store(&self) -> Store {
        Store {
            pool: match &self.telemetry_writer {
                Some(writer) => Pool::Sqlite(writer.clone()),
                None => self.pool.clone(),
            },
            telemetry_writer: None,
            metric_ids: self.metric_ids.clone(),
            keyring: self.keyring.clone(),
        }
    }
}

/// Unix time in milliseconds: every stored time.
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
