//! `telemark serve` and `demo`: the store, the first-start admin, the
//! embedded broker with the registry as its authenticator (or, with
//! `[external_broker]`, a client connection to a broker cluster), the
//! supervised background tasks (ingest, presence, alarms, webhooks,
//! retention, statistics) and the HTTP API with the console.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use broker::Broker;
use tracing::info;

use crate::config::Config;
use crate::listeners::{
    RunningBroker, metrics_renderer, serve_http, serve_metrics, shutdown_signal, start_broker,
};
use crate::{ServeArgs, demo, ingest_feed, registry};

/// Who holds a device's connection, in the registry, when an external
/// broker does.
const EXTERNAL_BROKER_HOLDER: &str = "external-broker";

/// Where the devices' connections are.
enum DeviceBroker {
    /// The embedded broker, with the ingest's in-process session (taken
    /// by the first ingest task).
    Embedded {
        running: RunningBroker,
        feed: Option<ingest_feed::EmbeddedFeed>,
    },
    /// A broker or cluster this process is a client of.
    External {
        connection: platform::telemetry::BrokerConnection,
        transport: Arc<platform::broker_client::ClientTaskTransport>,
    },
}

impl DeviceBroker {
    fn transport(&self) -> Arc<dyn platform::tasks::TaskTransport> {
        match self {
            DeviceBroker::Embedded { running, .. } => {
                Arc::new(ingest_feed::BrokerTaskTransport(running.broker.clone()))
            }
            DeviceBroker::External { transport, .. } => transport.clone(),
        }
    }

    fn embedded(&self) -> Option<&Broker> {
        match self {
            DeviceBroker::Embedded { running, .. } => Some(&running.broker),
            DeviceBroker::External { .. } => None,
        }
    }
}

/// The platform's connection to an external broker: its addresses, and
/// its login — `telemark-platform` with the database's internal secret
/// unless the configuration names another.
async fn external_connection(
    store: &store::Store,
    external: &crate::config::ExternalBroker,
    urls: &str,
    instance: &str,
) -> anyhow::Result<platform::telemetry::BrokerConnection> {
    let addresses = platform::broker_client::BrokerAddress::parse_list(urls)
        .map_err(|e| anyhow::anyhow!("external_broker.urls: {e}"))?;
    let ca_pem = match &external.ca_file {
        Some(path) => Some(
            std::fs::read(path)
                .with_context(|| format!("external_broker.ca_file {}", path.display()))?,
        ),
        None if addresses.iter().any(|a| a.tls) => {
            anyhow::bail!("external_broker: mqtts:// needs ca_file")
        }
        None => None,
    };
    if ca_pem.is_some() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let (username, password) = match (&external.username, &external.password) {
        (Some(user), password) => (user.clone(), password.clone().unwrap_or_default()),
        (None, _) => (
            platform::device_access::INTERNAL_USERNAME.to_owned(),
            platform::device_access::internal_secret(store).await?,
        ),
    };
    let group = &external.share_group;
    let shared = |filters: Vec<String>| -> Vec<String> {
        filters
            .into_iter()
            .map(|f| format!("$share/{group}/{f}"))
            .collect()
    };
    Ok(platform::telemetry::BrokerConnection {
        endpoint: platform::broker_client::BrokerEndpoint {
            addresses,
            username,
            password,
            ca_pem,
        },
        // Persistent sessions, one pair per instance: a restarted instance
        // gets what the broker kept for it while it was away. Answers have
        // their own, so a backlog of readings (an instance catching up)
        // does not hold a task's answer past its deadline.
        sessions: vec![
            platform::telemetry::IngestSession {
                client_id: format!("telemark-ingest-{instance}"),
                filters: shared(device_protocol::reading_filters()),
            },
            platform::telemetry::IngestSession {
                client_id: format!("telemark-answers-{instance}"),
                filters: shared(device_protocol::answer_filters().into()),
            },
        ],
    })
}

/// The platform: store, first-start admin, embedded broker, HTTP API.
pub(crate) async fn run_platform(
    mut config: Config,
    args: &ServeArgs,
    demo_devices: Option<usize>,
) -> anyhow::Result<()> {
    let store = open_store(&args.data, args.database.as_deref()).await?;
    info!(backend = store.backend(), "store ready");
    let admin_password = std::env::var("TELEMARK_ADMIN_PASSWORD").ok();
    if let Some(password) = platform::accounts::bootstrap(&store, admin_password.as_deref()).await?
    {
        if admin_password.is_some() {
            println!("First start: operator admin 'admin' created with TELEMARK_ADMIN_PASSWORD.");
        } else {
            println!("First start: operator admin 'admin', one-time password: {password}");
            println!("Change it after the first login.");
        }
    }
    // TLS listeners take device certificates from the platform's own device
    // CA unless the configuration names another.
    if let Some(tls) = config.tls.as_mut().filter(|t| t.client_ca.is_none()) {
        let pem = platform::device_certificates::device_ca_pem(&store).await?;
        std::fs::create_dir_all(&args.data)?;
        let path = args.data.join("device-ca.pem");
        std::fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
        tls.client_ca = Some(path);
    }
    // Devices log in with their MQTT secret or certificate, operator admins
    // with their console password; each is confined by the registry's ACL.
    let instance = args.instance_id.clone().unwrap_or_else(host_name);
    // One login throttle for console accounts over HTTP and over MQTT.
    let logins = Arc::new(platform::login_guard::LoginGuard::default());
    let presence = platform::presence::PresenceRecorder::new();
    // The platform's clients of an external broker connect once this
    // process's HTTP listener (the broker's auth hooks, when it asks this
    // instance) is up: a login the broker refused first can leave a
    // cluster's session for that client id in a state that drops messages
    // (seen with rmqtt 0.24) until the connection is replaced.
    let (http_up, http_ready) = tokio::sync::watch::channel(false);
    let ready = move || {
        let mut ready = http_ready.clone();
        async move {
            let _ = ready.wait_for(|up| *up).await;
        }
    };
    let mut devices = match config.external_broker.urls.clone() {
        Some(urls) => {
            let connection =
                external_connection(&store, &config.external_broker, &urls, &instance).await?;
            let transport = platform::broker_client::ClientTaskTransport::connect(
                connection.endpoint.clone(),
                &format!("telemark-tasks-{instance}"),
                ready(),
            );
            info!(broker = %connection.endpoint.describe(), "external broker: no embedded broker");
            DeviceBroker::External {
                connection,
                transport,
            }
        }
        None => {
            let stale = store.mark_all_offline(&instance).await?;
            if stale > 0 {
                info!(
                    devices = stale,
                    "devices marked offline: the embedded broker starts with no connections"
                );
            }
            let auth = Arc::new(registry::RegistryAuthenticator::new(
                store.clone(),
                logins.clone(),
                presence.clone(),
            ));
            // Persistent device sessions and retained messages live in the data
            // directory's journal unless the configuration puts them elsewhere.
            let mut broker_settings = config.broker.clone();
            if broker_settings.data_dir.is_none() {
                broker_settings.data_dir = Some(args.data.join("broker"));
            }
            let broker =
                Broker::open(broker_settings, auth).context("opening the broker's journal")?;
            // The ingest's in-process connection, there before any device is.
            let feed = ingest_feed::EmbeddedFeed::subscribe(&broker)?;
            DeviceBroker::Embedded {
                running: start_broker(&config, broker).await?,
                feed: Some(feed),
            }
        }
    };
    // Alarms: thresholds on ingest, offline and firmware in a leased pass,
    // webhooks for every change.
    let (alarms, alarm_events) = platform::alarms::AlarmEngine::new(store.clone()).await?;
    let alarm_events: platform::alarms::SharedAlarmEvents =
        Arc::new(tokio::sync::Mutex::new(alarm_events));
    let (stop_tasks, stop_rx) = tokio::sync::watch::channel(false);
    // Every background task runs under the supervisor: a panic is logged,
    // counted and followed by a restart (`/metrics`, `/api/v1/health`).
    let supervisor = platform::supervisor::Supervisor::new(stop_rx.clone());
    // Presence stops after the broker, so its last disconnects are written.
    let (stop_presence, presence_stop) = tokio::sync::watch::channel(false);
    let presence_task = {
        // Behind an external broker no instance holds a device's connection:
        // any of them may record its going.
        let holder = match &devices {
            DeviceBroker::Embedded { .. } => instance.clone(),
            DeviceBroker::External { .. } => EXTERNAL_BROKER_HOLDER.to_owned(),
        };
        let (presence, store, instance, stop) =
            (presence.clone(), store.clone(), holder, presence_stop);
        supervisor.spawn("presence", move || {
            presence
                .clone()
                .run(store.clone(), instance.clone(), stop.clone())
        })
    };
    let mut policy = platform::webhook_target::WebhookPolicy::new(
        config.webhooks.allowed_private_targets.iter().cloned(),
    );
    if !config.webhooks.enabled {
        policy = policy.disabled();
    }
    let webhooks = Arc::new(policy);
    {
        let (store, events, policy) = (store.clone(), alarm_events.clone(), webhooks.clone());
        supervisor.spawn("webhooks", move || {
            platform::alarms::run_webhooks(store.clone(), events.clone(), (*policy).clone())
        });
    }
    {
        let (alarms, stop) = (alarms.clone(), stop_rx.clone());
        let holder = format!("{}-{}", std::process::id(), platform::accounts::new_token());
        supervisor.spawn("alarms", move || {
            platform::alarms::run_periodic(alarms.clone(), holder.clone(), stop.clone())
        });
    }
    {
        let (store, stop) = (store.clone(), stop_rx.clone());
        let retention = platform::telemetry::Retention {
            raw_days: config.telemetry.raw_retention_days,
            hourly_days: config.telemetry.hourly_retention_days,
        };
        let holder = format!("{}-{}", std::process::id(), platform::accounts::new_token());
        supervisor.spawn("retention", move || {
            platform::telemetry::run_retention(
                store.clone(),
                retention,
                holder.clone(),
                stop.clone(),
            )
        });
    }
    // The platform reads device telemetry from the embedded broker through
    // its in-process connection, or from an external broker as a client.
    let ingest = platform::telemetry::Ingest::with_alarms(store.clone(), alarms.clone());
    if let DeviceBroker::External { connection, .. } = &devices {
        // No connection events from a broker we do not run: devices say
        // themselves (`status` at connect, their will when they go).
        let (ingest, presence, endpoint, stop) = (
            ingest.clone(),
            presence.clone(),
            connection.endpoint.clone(),
            stop_rx.clone(),
        );
        let client_id = format!("telemark-presence-{instance}");
        let ready = ready.clone();
        supervisor.spawn("presence reports", move || {
            let follow = platform::broker_client::follow_presence(
                ingest.clone(),
                presence.clone(),
                endpoint.clone(),
                client_id.clone(),
                stop.clone(),
            );
            let ready = ready();
            async move {
                ready.await;
                follow.await
            }
        });
    }
    ingest.set_max_backlog(config.telemetry.max_backlog_readings);
    ingest.set_timestamp_window(
        std::time::Duration::from_secs(u64::from(config.telemetry.max_reading_age_days) * 86_400),
        std::time::Duration::from_secs(u64::from(config.telemetry.max_reading_ahead_hours) * 3600),
    );
    // Remote tasks go out through the broker; their answers come back
    // through the ingest. Behind an external broker any instance reaches
    // every device.
    let tasks = platform::tasks::TaskService::new(
        store.clone(),
        devices.transport(),
        devices.embedded().map(|_| instance.clone()),
        Some(
            args.public_url
                .clone()
                .unwrap_or_else(|| format!("http://{}", reachable(args.http))),
        ),
    );
    ingest.set_tasks(tasks.clone());
    let firmware = {
        platform::firmware::check_vendor_keys(&config.firmware.trusted_keys)
            .map_err(|e| anyhow::anyhow!("[firmware] trusted_keys {e}"))?;
        let files = platform::firmware::ImageFiles::in_data_dir(&args.data);
        let orphans = files.remove_orphans(&store).await?;
        if orphans > 0 {
            tracing::info!(
                removed = orphans,
                "firmware files no image names (interrupted uploads)"
            );
        }
        let tokens = platform::firmware::DownloadTokens::load(&store).await?;
        tasks.set_firmware_tokens(tokens.clone());
        platform::firmware::FirmwareRepository {
            files,
            tokens,
            max_image_bytes: config.firmware.max_image_mb << 20,
            vendor_keys: config.firmware.trusted_keys.clone(),
        }
    };
    {
        let engine = platform::campaigns::CampaignEngine::new(store.clone(), tasks.clone());
        let stop = stop_rx.clone();
        supervisor.spawn("campaigns", move || engine.clone().run(stop.clone()));
    }
    let remote = platform::remote::RemoteSessions::new(
        store.clone(),
        devices.transport(),
        tasks.clone(),
        config.remote.settings()?,
    );
    ingest.set_remote(remote.clone());
    {
        let (remote, stop) = (remote.clone(), stop_rx.clone());
        supervisor.spawn("remote sessions", move || {
            remote.clone().run_sweeper(stop.clone())
        });
    }
    {
        let (tasks, stop) = (tasks.clone(), stop_rx.clone());
        supervisor.spawn("tasks", move || tasks.clone().run(stop.clone()));
    }
    let ingest_task = match &mut devices {
        DeviceBroker::Embedded { running, feed } => {
            let (ingest, broker, stop) = (ingest.clone(), running.broker.clone(), stop_rx.clone());
            // The first feed was subscribed before the listeners opened; a
            // restarted ingest subscribes again.
            let mut first = feed.take();
            supervisor.spawn("ingest", move || {
                let (ingest, stop) = (ingest.clone(), stop.clone());
                let feed = first
                    .take()
                    .map(Ok)
                    .unwrap_or_else(|| ingest_feed::EmbeddedFeed::subscribe(&broker));
                async move {
                    match feed {
                        Ok(feed) => platform::telemetry::run_feed(ingest, feed, stop).await,
                        Err(e) => tracing::warn!(error = %e, "the ingest cannot subscribe"),
                    }
                }
            })
        }
        DeviceBroker::External { connection, .. } => {
            let (ingest, connection, stop) = (ingest.clone(), connection.clone(), stop_rx.clone());
            let ready = ready.clone();
            supervisor.spawn("ingest", move || {
                let run =
                    platform::telemetry::run(ingest.clone(), connection.clone(), stop.clone());
                let ready = ready();
                async move {
                    ready.await;
                    run.await
                }
            })
        }
    };
    {
        // Daily statistics snapshots for week-over-week change. Idempotent
        // upserts, so several `telemark serve` on one database need no lease.
        let (store, stop) = (store.clone(), stop_rx.clone());
        supervisor.spawn("statistics", move || {
            let (store, mut stop) = (store.clone(), stop.clone());
            async move {
                let mut hourly = tokio::time::interval(std::time::Duration::from_secs(3600));
                loop {
                    tokio::select! {
                        _ = hourly.tick() => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                    if let Err(e) = store.snapshot_all().await {
                        tracing::warn!(error = %e, "daily statistics snapshot failed");
                    }
                }
            }
        });
    }
    let render_metrics = {
        let (broker_metrics, supervisor, tasks, remote) = (
            metrics_renderer(devices.embedded(), Some(ingest.clone())),
            supervisor.clone(),
            tasks.clone(),
            remote.clone(),
        );
        // Behind an external broker: requests the client connection could
        // not queue.
        let transport = match &devices {
            DeviceBroker::External { transport, .. } => Some(transport.clone()),
            DeviceBroker::Embedded { .. } => None,
        };
        let render: api::MetricsRenderer = Arc::new(move || {
            broker_metrics()
                + &supervisor.prometheus()
                + &tasks.counters.prometheus()
                + &remote.prometheus()
                + &transport
                    .as_ref()
                    .map(|t| t.prometheus())
                    .unwrap_or_default()
        });
        render
    };
    let options = api::ApiOptions {
        broker_hook_secret: args.broker_hook_secret.clone(),
        ingest: Some(ingest.clone()),
        alarms: Some(alarms.clone()),
        tasks: Some(tasks.clone()),
        remote: Some(remote.clone()),
        firmware: Some(firmware),
        ddi_poll_secs: config.firmware.ddi_poll_secs,
        data_dir: Some(args.data.clone()),
        logins,
        webhooks,
        metrics: Some(render_metrics.clone()),
        supervisor: Some(supervisor.clone()),
        secure_cookie: args
            .public_url
            .as_deref()
            .is_some_and(|url| url.starts_with("https://")),
    };
    let stopping = || {
        let mut stop = stop_rx.clone();
        async move {
            let _ = stop.wait_for(|s| *s).await;
        }
    };
    serve_metrics(&config, stopping(), render_metrics).await?;
    let app = api::app_with(store.clone(), options);
    let http = serve_http(args.http, app, stopping(), "HTTP").await?;
    let _ = http_up.send(true);
    println!(
        "Telemark is up: console http://{http}/, API http://{http}/api/v1, MQTT {}",
        match &devices {
            DeviceBroker::Embedded { .. } => describe_listeners(&config),
            DeviceBroker::External { connection, .. } => format!(
                "through {} (external broker)",
                connection.endpoint.describe()
            ),
        }
    );
    let (stop_fleet, fleet_stopped) = tokio::sync::watch::channel(false);
    let fleet = match (demo_devices, config.listeners.tcp, devices.embedded()) {
        (Some(count), Some(addr), Some(_)) => {
            let devices = demo::seed(&store, count).await?;
            alarms.refresh_rules().await?;
            println!(
                "Demo fleet: {} simulated devices publishing every 5 s. Log in as admin.",
                devices.len()
            );
            let fleet = Some(tokio::spawn(agent::sim::run_fleet(
                devices,
                agent::sim::SimOptions {
                    broker: format!("mqtt://{}:{}", loopback_for(addr), addr.port()),
                    interval: std::time::Duration::from_secs(5),
                    dropout: 0.002,
                    firmware: "2.1.4".into(),
                    reboot_time: std::time::Duration::from_secs(8),
                    license_public_key: platform::licensing::public_key(&store).await.ok(),
                    // Enough devices fail their update that the demo campaign rolls
                    // some back and pauses itself at its 5 % threshold.
                    fota_failure: 0.08,
                },
                std::sync::Arc::default(),
                fleet_stopped,
            )));
            tokio::spawn(demo::start_jobs(store.clone(), tasks.clone()));
            tokio::spawn(demo::start_campaign(
                store.clone(),
                platform::firmware::ImageFiles::in_data_dir(&args.data),
            ));
            fleet
        }
        _ => None,
    };
    shutdown_signal().await;
    info!("shutting down");
    let _ = stop_fleet.send(true);
    if let Some(fleet) = fleet {
        let _ = fleet.await;
    }
    let _ = stop_tasks.send(true);
    let _ = ingest_task.await;
    if let DeviceBroker::Embedded { running, .. } = devices {
        running.stop().await;
    }
    // The broker's last disconnects are written before the store closes.
    let _ = stop_presence.send(true);
    let _ = presence_task.await;
    store.close().await;
    Ok(())
}

/// The machine's host name, the default instance id.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "telemark".to_owned())
}

/// `addr` as another process on this machine reaches it.
fn reachable(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(loopback_for(addr), addr.port())
}

/// The address to reach a listener bound to `addr` from this process.
fn loopback_for(addr: SocketAddr) -> std::net::IpAddr {
    match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv6() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        ip => ip,
    }
}

fn describe_listeners(config: &Config) -> String {
    let l = &config.listeners;
    [("tcp", l.tcp), ("tls", l.tls), ("ws", l.ws), ("wss", l.wss)]
        .iter()
        .filter_map(|(name, addr)| addr.map(|a| format!("{name}://{a}")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The platform's database: PostgreSQL at `database`, or SQLite in the data
/// directory. Platform secrets are sealed with `TELEMARK_SECRET_KEY` (64 hex
/// digits; every instance on one database needs the same) or else with the
/// data directory's `platform.key`, made on first use with mode 0600.
pub(crate) async fn open_store(
    data: &std::path::Path,
    database: Option<&str>,
) -> anyhow::Result<store::Store> {
    let store = match database {
        Some(url) => store::Store::open(url).await?,
        None => store::Store::open_data_dir(data).await?,
    };
    match std::env::var("TELEMARK_SECRET_KEY") {
        Ok(hex) => store.set_keyring(store::SecretKeyring::new(
            store::SecretKey::from_hex(&hex).context("TELEMARK_SECRET_KEY")?,
        )),
        Err(_) if database.is_some() => {
            std::fs::create_dir_all(data)?;
            store.set_keyring(store::SecretKeyring::in_data_dir(data)?);
        }
        Err(_) => {}
    }
    Ok(store)
}
