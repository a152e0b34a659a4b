//! `telemark`: the MQTT broker and device management platform in one binary.

mod config;
mod demo;
mod firmware_upload;
mod ingest_feed;
mod listeners;
mod registry;
mod serve;
mod tunnel;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tracing::info;

use crate::config::Config;
use crate::listeners::{run_broker, shutdown_signal};
use crate::serve::run_platform;

#[derive(Debug, Parser)]
#[command(
    name = "telemark",
    version,
    about = "MQTT broker and IoT device management platform"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the MQTT broker on its own.
    Broker(Box<BrokerArgs>),
    /// Run the platform: embedded broker, store, HTTP API.
    Serve(Box<ServeArgs>),
    /// Add or replace a user in a password file (argon2id).
    Passwd {
        /// The password file; created if missing.
        file: PathBuf,
        user: String,
        /// The password; read from standard input when left out.
        #[arg(long)]
        password: Option<String>,
    },
    /// Print the commented default configuration file.
    Config,
    /// Import into the registry from a file.
    Import {
        #[command(subcommand)]
        what: ImportWhat,
    },
    /// Load-test an MQTT broker (this one or any other) on one address.
    Bench(Box<BenchArgs>),
    /// The platform with a simulated fleet, for a first look.
    Demo(Box<DemoArgs>),
    /// Run on a device: publish its black box to the platform.
    Agent {
        /// The provisioning file (TOML; see docs/device-protocol.md).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Simulate a fleet of devices against a broker.
    Sim(Box<SimArgs>),
    /// Forward a local port to a port on a device, through the platform.
    Tunnel(Box<tunnel::TunnelArgs>),
    /// The firmware repository of a running platform.
    Firmware {
        #[command(subcommand)]
        what: FirmwareCommand,
    },
    /// The key platform secrets are sealed with.
    Secrets {
        #[command(subcommand)]
        what: SecretsCommand,
    },
}

#[derive(Debug, Subcommand)]
enum FirmwareCommand {
    /// Upload an image (streamed, with a progress bar); the platform hashes
    /// and signs it.
    Upload(Box<firmware_upload::UploadArgs>),
}

#[derive(Debug, Subcommand)]
enum SecretsCommand {
    /// Seal every platform secret with a new key and replace the data
    /// directory's `platform.key` (the old one is kept as
    /// `platform.key.old`). With TELEMARK_SECRET_KEY, the new key is
    /// printed instead, to be given to every instance.
    RotateKey {
        /// Data directory of the embedded SQLite database and its key.
        #[arg(long, default_value = "telemark-data")]
        data: PathBuf,
        #[arg(long, env = "TELEMARK_DATABASE")]
        database: Option<String>,
    },
}

#[derive(Debug, Args)]
struct DemoArgs {
    #[command(flatten)]
    serve: ServeArgs,
    /// Devices in the simulated fleet.
    #[arg(long, default_value_t = 50)]
    devices: usize,
}

#[derive(Debug, Args)]
struct SimArgs {
    /// CSV with the columns device_id,model,secret (the credentials the API issued).
    #[arg(long)]
    fleet: PathBuf,
    /// The broker: mqtt://HOST:PORT, or a cluster's nodes comma-separated
    /// (devices spread over them and move on when one fails).
    #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
    broker: String,
    /// Seconds between a device's readings.
    #[arg(long, default_value_t = 10)]
    interval: u64,
    /// Chance per interval that a device drops off for a while.
    #[arg(long, default_value_t = 0.0)]
    dropout: f64,
    /// Milliseconds a simulated reboot keeps a device away (±50 %).
    #[arg(long, default_value_t = 3000)]
    reboot_ms: u64,
    /// The platform's license key (base64, `GET /api/v1/license/public-key`):
    /// simulated devices verify license tokens and firmware images with it.
    #[arg(long)]
    license_public_key: Option<String>,
    /// Chance that a firmware update fails (at install, or at the first
    /// boot, which rolls back).
    #[arg(long, default_value_t = 0.0)]
    fota_failure: f64,
}

#[derive(Debug, Subcommand)]
enum ImportWhat {
    /// Devices from CSV (header row) or an ERP JSON batch (`.json`).
    Devices {
        file: PathBuf,
        /// Data directory of the embedded SQLite database.
        #[arg(long, default_value = "telemark-data")]
        data: PathBuf,
        #[arg(long, env = "TELEMARK_DATABASE")]
        database: Option<String>,
        /// The organisation to import into (and below); the operator by default.
        #[arg(long)]
        organisation: Option<i64>,
        /// Import the valid rows even when some are rejected.
        #[arg(long)]
        partial: bool,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Data directory of the embedded SQLite database.
    #[arg(long, default_value = "telemark-data")]
    data: PathBuf,
    /// PostgreSQL instead of SQLite: postgres://user@host/db.
    #[arg(long, env = "TELEMARK_DATABASE")]
    database: Option<String>,
    /// The HTTP API (and /metrics) on ADDR.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// MQTT over TCP on ADDR; replaces the configured listeners.
    #[arg(long, value_name = "ADDR")]
    mqtt: Option<SocketAddr>,
    /// MQTT over WebSocket on ADDR (with --mqtt).
    #[arg(long, value_name = "ADDR")]
    mqtt_ws: Option<SocketAddr>,
    /// MQTT over TLS on ADDR (with --mqtt, --tls-cert and --tls-key). Devices
    /// may log in with a certificate from the platform's device CA.
    #[arg(long, value_name = "ADDR")]
    mqtt_tls: Option<SocketAddr>,
    #[arg(long, value_name = "PEM")]
    tls_cert: Option<PathBuf>,
    #[arg(long, value_name = "PEM")]
    tls_key: Option<PathBuf>,
    /// Serve /api/v1/mqtt/authenticate and /authorize to an external broker
    /// (EMQX HTTP auth) that sends `Authorization: Bearer SECRET`.
    #[arg(long, env = "TELEMARK_BROKER_HOOK_SECRET", hide_env_values = true)]
    broker_hook_secret: Option<String>,
    /// The address users reach the console at, when a reverse proxy puts
    /// it elsewhere (https://nms.example.com/): an https URL makes the
    /// session cookie Secure.
    #[arg(long, env = "TELEMARK_PUBLIC_URL", value_name = "URL")]
    public_url: Option<String>,
    /// Run behind this broker or cluster instead of the embedded broker:
    /// mqtt://HOST:PORT or mqtts://…, comma-separated for failover
    /// ([external_broker] urls).
    #[arg(long, value_name = "URLS")]
    broker: Option<String>,
    /// This instance's name among several `serve` on one database (its
    /// host name by default): at start it marks offline only the devices
    /// it held.
    #[arg(long, env = "TELEMARK_INSTANCE_ID")]
    instance_id: Option<String>,
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// fan-in, fan-out, pairs, idle, connect or fleet.
    scenario: bench::Scenario,
    /// The broker, ADDR:PORT.
    #[arg(long, default_value = "127.0.0.1:1883")]
    broker: SocketAddr,
    /// Publishers (fan-in), subscribers (fan-out), pairs, devices (fleet),
    /// connections held (idle) or concurrent connectors (connect).
    #[arg(long, short = 'n', default_value_t = 100)]
    connections: usize,
    /// Payload bytes (at least 20: the send time travels in it).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Total messages per second; leave out for as fast as it goes.
    #[arg(long)]
    rate: Option<u64>,
    /// Seconds of load.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// MQTT protocol: 3.1.1 or 5.
    #[arg(long, default_value = "3.1.1")]
    protocol: String,
    /// At max rate: messages per publisher sent and not yet delivered to a
    /// subscriber (closed loop); 0 picks as many as Mosquitto delivers with its
    /// defaults (fan-in: 1,000 in all at QoS 1, 4 each at QoS 0; 64 otherwise).
    #[arg(long, default_value_t = 0)]
    window: usize,
    /// Spread connections over this many source addresses 127.0.0.1.. (idle: 100,000 needs 5).
    #[arg(long, default_value_t = 1)]
    sources: usize,
    /// Read the broker's CPU and memory from /proc/PID.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Seconds between a fleet device's telemetry rounds.
    #[arg(long, default_value_t = 5.0)]
    fleet_interval: f64,
    /// Client id and topic prefix, distinct per generator sharing a broker.
    #[arg(long, default_value = "bench")]
    prefix: String,
    /// Persistent sessions (MQTT 5 session expiry, 3.1.1 Clean Session 0):
    /// what a broker with persistence on writes to its log.
    #[arg(long)]
    persistent: bool,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct BrokerArgs {
    /// TOML configuration file.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// MQTT over TCP on ADDR. Any listener flag replaces the configured listeners.
    #[arg(long, value_name = "ADDR")]
    tcp: Option<SocketAddr>,
    /// MQTT over TLS on ADDR (needs --tls-cert and --tls-key).
    #[arg(long, value_name = "ADDR")]
    tls: Option<SocketAddr>,
    /// MQTT over WebSocket on ADDR, path /mqtt.
    #[arg(long, value_name = "ADDR")]
    ws: Option<SocketAddr>,
    /// MQTT over secure WebSocket on ADDR.
    #[arg(long, value_name = "ADDR")]
    wss: Option<SocketAddr>,
    #[arg(long, value_name = "PEM")]
    tls_cert: Option<PathBuf>,
    #[arg(long, value_name = "PEM")]
    tls_key: Option<PathBuf>,
    /// CA for client certificates (mTLS).
    #[arg(long, value_name = "PEM")]
    tls_client_ca: Option<PathBuf>,
    /// Refuse TLS clients without a certificate signed by --tls-client-ca.
    #[arg(long)]
    tls_require_client_cert: bool,
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    #[arg(long, value_name = "FILE")]
    acl_file: Option<PathBuf>,
    /// Let clients without a user name in even with a password file.
    #[arg(long)]
    allow_anonymous: bool,
    /// Serve Prometheus metrics on http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Keep persistent sessions and retained messages in a journal in DIR,
    /// across restarts and crashes ([broker] data_dir).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// When the journal is synced: always, batch or never ([broker] fsync).
    #[arg(long, value_name = "POLICY", value_parser = ["always", "batch", "never"])]
    fsync: Option<String>,
}

impl BrokerArgs {
    fn apply(&self, config: &mut Config) {
        if self.tcp.is_some() || self.tls.is_some() || self.ws.is_some() || self.wss.is_some() {
            config.listeners = config::Listeners {
                tcp: self.tcp,
                tls: self.tls,
                ws: self.ws,
                wss: self.wss,
            };
        }
        if let (Some(certificate), Some(private_key)) = (&self.tls_cert, &self.tls_key) {
            config.tls = Some(config::Tls {
                certificate: certificate.clone(),
                private_key: private_key.clone(),
                client_ca: self.tls_client_ca.clone(),
                require_client_certificate: self.tls_require_client_cert,
            });
        }
        if self.password_file.is_some() {
            config.auth.password_file = self.password_file.clone();
        }
        if self.acl_file.is_some() {
            config.auth.acl_file = self.acl_file.clone();
        }
        if self.allow_anonymous {
            config.auth.allow_anonymous = Some(true);
        }
        if self.metrics.is_some() {
            config.metrics.bind = self.metrics;
        }
        if self.data.is_some() {
            config.broker.data_dir = self.data.clone();
        }
        config.broker.fsync = match self.fsync.as_deref() {
            Some("batch") => broker::FsyncPolicy::Batch,
            Some("never") => broker::FsyncPolicy::Never,
            Some(_) => broker::FsyncPolicy::Always,
            None => config.broker.fsync,
        };
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Broker(args) => {
            raise_file_limit();
            let mut config = Config::load(args.config.as_deref())?;
            args.apply(&mut config);
            config.validate()?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(run_broker(config))
        }
        Command::Serve(args) => {
            raise_file_limit();
            let mut config = Config::load(args.config.as_deref())?;
            if args.mqtt.is_some() || args.mqtt_ws.is_some() || args.mqtt_tls.is_some() {
                config.listeners = config::Listeners {
                    tcp: args.mqtt,
                    tls: args.mqtt_tls,
                    ws: args.mqtt_ws,
                    wss: None,
                };
            }
            if let (Some(certificate), Some(private_key)) = (&args.tls_cert, &args.tls_key) {
                config.tls = Some(config::Tls {
                    certificate: certificate.clone(),
                    private_key: private_key.clone(),
                    client_ca: None,
                    require_client_certificate: false,
                });
            }
            if args.broker.is_some() {
                config.external_broker.urls = args.broker.clone();
            }
            config.validate()?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(run_platform(config, &args, None))
        }
        Command::Passwd {
            file,
            user,
            password,
        } => passwd(&file, &user, password),
        Command::Secrets {
            what: SecretsCommand::RotateKey { data, database },
        } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(rotate_secret_key(&data, database.as_deref())),
        Command::Import {
            what:
                ImportWhat::Devices {
                    file,
                    data,
                    database,
                    organisation,
                    partial,
                },
        } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(import_devices(
                &file,
                &data,
                database.as_deref(),
                organisation,
                partial,
            )),
        Command::Config => {
            print!("{}", config::DEFAULT_FILE);
            Ok(())
        }
        Command::Bench(args) => {
            raise_file_limit();
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(run_bench(*args))
        }
        Command::Demo(args) => {
            raise_file_limit();
            let mut config = Config::load(args.serve.config.as_deref())?;
            if let Some(mqtt) = args.serve.mqtt {
                config.listeners = config::Listeners {
                    tcp: Some(mqtt),
                    tls: None,
                    ws: args.serve.mqtt_ws,
                    wss: None,
                };
            }
            config.validate()?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(run_platform(config, &args.serve, Some(args.devices)))
        }
        Command::Agent { config } => {
            let provisioning = agent::Provisioning::load(&config)?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(async move {
                    let (stop, stopped) = tokio::sync::watch::channel(false);
                    let task = tokio::spawn(agent::session::run(provisioning, stopped));
                    shutdown_signal().await;
                    let _ = stop.send(true);
                    let report = task.await??;
                    info!(
                        published = report.published,
                        buffered = report.buffered,
                        dropped = report.dropped,
                        "agent stopped"
                    );
                    Ok(())
                })
        }
        Command::Tunnel(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(tunnel::run(*args)),
        Command::Firmware {
            what: FirmwareCommand::Upload(args),
        } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(firmware_upload::upload(*args)),
        Command::Sim(args) => {
            raise_file_limit();
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(run_sim(*args))
        }
    }
}

/// Reads `device_id,model,secret` rows (a header row is skipped).
fn read_fleet(path: &std::path::Path) -> anyhow::Result<Vec<agent::sim::SimDevice>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut devices = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if line.trim().is_empty() || (n == 0 && fields.first() == Some(&"device_id")) {
            continue;
        }
        let [device_id, model, secret] = fields[..] else {
            anyhow::bail!(
                "{}:{}: expected device_id,model,secret",
                path.display(),
                n + 1
            );
        };
        devices.push(agent::sim::SimDevice {
            device_id: device_id.to_owned(),
            model: model.to_owned(),
            secret: secret.to_owned(),
        });
    }
    Ok(devices)
}

async fn run_sim(args: SimArgs) -> anyhow::Result<()> {
    let devices = read_fleet(&args.fleet)?;
    let total = devices.len();
    let counters = std::sync::Arc::new(agent::sim::SimCounters::default());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let fleet = tokio::spawn(agent::sim::run_fleet(
        devices,
        agent::sim::SimOptions {
            broker: args.broker,
            interval: std::time::Duration::from_secs(args.interval.max(1)),
            dropout: args.dropout,
            firmware: "1.0.0".into(),
            reboot_time: std::time::Duration::from_millis(args.reboot_ms),
            license_public_key: args.license_public_key,
            fota_failure: args.fota_failure,
        },
        counters.clone(),
        stopped,
    ));
    println!("simulating {total} devices; Ctrl-C stops");
    shutdown_signal().await;
    let _ = stop.send(true);
    let _ = fleet.await;
    let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "sent {} messages, {} readings, {} of them acknowledged by the broker",
        count(&counters.messages),
        count(&counters.readings),
        count(&counters.readings_acknowledged)
    );
    Ok(())
}

/// One descriptor per connection: take the hard limit, not the usual 1024.
fn raise_file_limit() {
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(error = %e, "cannot raise the open file limit");
    }
    reserve_file_table();
}

/// Grows the kernel's descriptor table once, before the runtime starts its
/// threads. Linux grows it by doubling, and in a process with several
/// threads each growth waits for an RCU grace period: connections arriving
/// one after another stalled 11-22 ms at the 256th, 512th, 1,024th, …
/// (Mosquitto, with one thread, does not wait). The table costs the kernel
/// 8 bytes per slot; past the reserve it grows as before.
fn reserve_file_table() {
    const RESERVE: u64 = 131_072;
    #[cfg(target_os = "linux")]
    if let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE)
        && let Ok(top) = i32::try_from(soft.min(RESERVE).saturating_sub(1))
        && top > 1024
    {
        // A copy of stderr at the top slot, closed again at once: the
        // table keeps its size.
        let _ = rustix::io::fcntl_dupfd_cloexec(std::io::stderr(), top);
    }
}

async fn run_bench(args: BenchArgs) -> anyhow::Result<()> {
    let version = match args.protocol.as_str() {
        "3.1.1" | "4" => mqtt::ProtocolVersion::V3_1_1,
        "5" | "5.0" => mqtt::ProtocolVersion::V5,
        "3.1" | "3" => mqtt::ProtocolVersion::V3_1,
        other => anyhow::bail!("unknown protocol {other:?}: use 3.1.1 or 5"),
    };
    let qos = mqtt::QoS::from_u8(args.qos).context("QoS is 0, 1 or 2")?;
    let options = bench::Options {
        scenario: args.scenario,
        addr: args.broker,
        connections: args.connections,
        payload: args.payload,
        qos,
        rate: args.rate,
        duration: std::time::Duration::from_secs_f64(args.duration.max(0.1)),
        version,
        window: args.window,
        sources: args.sources,
        broker_pid: args.broker_pid,
        fleet_interval: std::time::Duration::from_secs_f64(args.fleet_interval.max(0.01)),
        progress: true,
        prefix: args.prefix,
        drain: std::time::Duration::from_secs(5),
        persistent: args.persistent,
    };
    let report = bench::run(&options).await?;
    eprintln!("{}", report.summary());
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

async fn import_devices(
    file: &std::path::Path,
    data: &std::path::Path,
    database: Option<&str>,
    organisation: Option<i64>,
    partial: bool,
) -> anyhow::Result<()> {
    let store = serve::open_store(data, database).await?;
    let organisation = match organisation {
        Some(id) => id,
        None => store
            .user_by_username("admin")
            .await?
            .map(|u| u.organisation_id)
            .context("no operator yet: run `telemark serve` once, or pass --organisation")?,
    };
    let scope = store.scope_of(organisation).await?;
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let format = if file
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
    {
        platform::import::ImportFormat::ErpJson
    } else {
        platform::import::ImportFormat::Csv
    };
    let source = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let progress = indicatif::ProgressBar::new_spinner();
    progress.set_message(format!("importing {source}"));
    progress.enable_steady_tick(std::time::Duration::from_millis(100));
    let actor = format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    );
    let record =
        platform::import::import(&store, &scope, &actor, &source, &bytes, format, partial).await;
    progress.finish_and_clear();
    let record = record?;
    store
        .record_audit(&store::NewAuditEntry {
            organisation_id: organisation,
            actor,
            action: "device.import".into(),
            target: format!("import {} ({})", record.id, record.source_name),
            before_value: None,
            after_value: Some(format!(
                "{} accepted, {} rejected",
                record.rows_accepted, record.rows_rejected
            )),
            address: None,
        })
        .await?;
    println!(
        "import {}: {} accepted, {} rejected{}",
        record.id,
        record.rows_accepted,
        record.rows_rejected,
        if !partial && record.rows_rejected > 0 {
            " (nothing written: use --partial to keep the valid rows)"
        } else {
            ""
        }
    );
    for r in &record.rejections {
        println!("  line {}: {}", r.line, r.reason);
    }
    store.close().await;
    if record.rows_rejected > 0 && !partial {
        std::process::exit(1);
    }
    Ok(())
}

/// `telemark secrets rotate-key`. Crash-safe: the new key is written as
/// `platform.key.new` before the database is resealed (a store opening the
/// data directory reads both), and takes the old one's place after.
async fn rotate_secret_key(data: &std::path::Path, database: Option<&str>) -> anyhow::Result<()> {
    let store = serve::open_store(data, database).await?;
    let new = store::SecretKey::generate();
    let from_environment = std::env::var("TELEMARK_SECRET_KEY").is_ok();
    let path = store::key_path(data);
    let staged = path.with_extension("key.new");
    if !from_environment {
        store::write_key_file(&staged, &new)?;
    }
    let sealed = store.rotate_secret_key(new.clone()).await?;
    if from_environment {
        println!("{sealed} secrets sealed with the new key {}.", new.id());
        println!("Give every instance TELEMARK_SECRET_KEY={}", new.to_hex());
    } else {
        std::fs::rename(&path, path.with_extension("key.old"))?;
        std::fs::rename(&staged, &path)?;
        println!(
            "{sealed} secrets sealed with the new key {} in {}; the old key is in {}.old until you remove it.",
            new.id(),
            path.display(),
            path.display()
        );
    }
    store.close().await;
    Ok(())
}

fn passwd(file: &std::path::Path, user: &str, password: Option<String>) -> anyhow::Result<()> {
    if user.is_empty() || user.contains(':') {
        anyhow::bail!("a user name must be non-empty and without ':'");
    }
    let password = match password {
        Some(p) => p,
        None => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    if password.is_empty() {
        anyhow::bail!("the password is empty");
    }
    let hash = passwords::hash(&password)?;
    let existing = std::fs::read_to_string(file).unwrap_or_default();
    let mut lines: Vec<String> = existing
        .lines()
        .filter(|l| l.split_once(':').map(|(u, _)| u) != Some(user))
        .map(str::to_owned)
        .collect();
    lines.push(format!("{user}:{hash}"));
    std::fs::write(file, lines.join("\n") + "\n")
        .with_context(|| format!("writing {}", file.display()))?;
    println!("{user} set in {}", file.display());
    Ok(())
}
