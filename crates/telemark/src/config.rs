//! The one configuration: defaults in code, then a TOML file, then
//! `TELEMARK__SECTION__KEY` environment variables, then command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[derive(Default)]
pub struct Config {
    pub listeners: Listeners,
    pub tls: Option<Tls>,
    pub auth: Auth,
    pub metrics: Metrics,
    pub telemetry: Telemetry,
    pub webhooks: Webhooks,
    pub remote: Remote,
    pub firmware: Firmware,
    pub broker: broker::Settings,
    pub external_broker: ExternalBroker,
}

/// `serve` behind a broker (or cluster) it does not run: no embedded
/// broker; the platform reads and publishes as a client.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExternalBroker {
    /// `mqtt://host:port` or `mqtts://…`, several comma-separated for
    /// failover. Unset: the embedded broker.
    pub urls: Option<String>,
    /// The platform's login. Unset: `telemark-platform` with the
    /// database's internal secret, which the platform's own auth hooks
    /// accept (the broker asks them).
    pub username: Option<String>,
    pub password: Option<String>,
    /// The CA of the brokers' certificates, for `mqtts://`.
    pub ca_file: Option<PathBuf>,
    /// Instances in one group split the devices' messages between them
    /// (`$share/{group}/dwr/+/+/hardware/#` and the contract's other
    /// subtrees).
    pub share_group: String,
}

impl Default for ExternalBroker {
    fn default() -> Self {
        ExternalBroker {
            urls: None,
            username: None,
            password: None,
            ca_file: None,
            share_group: "telemark".into(),
        }
    }
}

/// The firmware repository: how large an image may be and which vendor
/// keys a detached signature may come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Firmware {
    pub max_image_mb: u64,
    /// base64url ed25519 public keys; the platform's own key is always trusted.
    pub trusted_keys: Vec<String>,
    /// Seconds a hawkBit DDI client sleeps between polls (`config.polling.sleep`).
    pub ddi_poll_secs: u64,
}

impl Default for Firmware {
    fn default() -> Self {
        Firmware {
            max_image_mb: platform::firmware::DEFAULT_MAX_IMAGE_BYTES >> 20,
            trusted_keys: Vec::new(),
            ddi_poll_secs: 300,
        }
    }
}

/// Remote access: who may open terminals and tunnels, for how long, and
/// the bastion reverse SSH tunnels go to.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Remote {
    /// Roles that may open sessions (`operator-admin`, `integrator-admin`,
    /// `customer-admin`, `engineer`).
    pub roles: Vec<String>,
    pub idle_secs: u32,
    pub max_secs: u32,
    pub per_device: usize,
    pub total: usize,
    pub bastion: Option<Bastion>,
}

impl Default for Remote {
    fn default() -> Self {
        let d = platform::remote::RemoteSettings::default();
        Remote {
            roles: d.roles.iter().map(|r| r.as_str().to_owned()).collect(),
            idle_secs: d.idle_secs,
            max_secs: d.max_secs,
            per_device: d.per_device,
            total: d.total,
            bastion: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bastion {
    pub host: String,
    #[serde(default = "ssh_port")]
    pub port: u16,
    pub user: String,
    /// The bastion's public host key file (`ssh_host_ed25519_key.pub`).
    pub host_key_file: PathBuf,
    /// The `authorized_keys` of `user`, kept by Telemark.
    pub authorized_keys: PathBuf,
}

fn ssh_port() -> u16 {
    22
}

impl Remote {
    pub fn settings(&self) -> anyhow::Result<platform::remote::RemoteSettings> {
        let roles = self
            .roles
            .iter()
            .map(|r| {
                platform::accounts::Role::parse(r)
                    .filter(|r| *r != platform::accounts::Role::Viewer)
                    .with_context(|| format!("remote.roles: {r:?} is not a role that may act"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        if self.idle_secs == 0 || self.max_secs == 0 || self.max_secs > 7 * 86_400 {
            bail!("remote.idle_secs and remote.max_secs must be 1 s to a week");
        }
        let bastion = match &self.bastion {
            None => None,
            Some(b) => {
                let host_key = std::fs::read_to_string(&b.host_key_file).with_context(|| {
                    format!("remote.bastion.host_key_file {}", b.host_key_file.display())
                })?;
                // `type base64 [comment]`: the comment is not part of the key.
                let host_key = host_key
                    .split_whitespace()
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ");
                Some(platform::remote::Bastion {
                    host: b.host.clone(),
                    port: b.port,
                    user: b.user.clone(),
                    host_key,
                    authorized_keys: b.authorized_keys.clone(),
                })
            }
        };
        Ok(platform::remote::RemoteSettings {
            roles,
            idle_secs: self.idle_secs,
            max_secs: self.max_secs,
            per_device: self.per_device.max(1),
            total: self.total.max(1),
            bastion,
        })
    }
}

/// Where alarm webhooks may point.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Webhooks {
    /// False: no webhook is ever called (each delivery is logged as not sent).
    pub enabled: bool,
    /// Host names or addresses that webhooks may reach although they are
    /// not public (loopback, private, link-local). Empty: only the internet.
    pub allowed_private_targets: Vec<String>,
}

impl Default for Webhooks {
    fn default() -> Self {
        Webhooks {
            enabled: true,
            allowed_private_targets: Vec::new(),
        }
    }
}

/// Where the broker listens. A listener left out is off.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Listeners {
    pub tcp: Option<SocketAddr>,
    pub tls: Option<SocketAddr>,
    pub ws: Option<SocketAddr>,
    pub wss: Option<SocketAddr>,
}

impl Default for Listeners {
    fn default() -> Self {
        Listeners {
            tcp: Some(SocketAddr::from(([127, 0, 0, 1], 1883))),
            tls: None,
            ws: Some(SocketAddr::from(([127, 0, 0, 1], 8083))),
            wss: None,
        }
    }
}

/// Certificate and key for the `tls` and `wss` listeners.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    /// CA that signs client certificates (mTLS).
    pub client_ca: Option<PathBuf>,
    #[serde(default)]
    pub require_client_certificate: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Auth {
    /// `user:argon2-hash` lines, written by `telemark passwd`.
    pub password_file: Option<PathBuf>,
    /// Mosquitto-style ACL file.
    pub acl_file: Option<PathBuf>,
    /// Let clients without a user name in. Defaults to true without a
    /// password file, false with one.
    pub allow_anonymous: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Metrics {
    /// Serves Prometheus text on `http://ADDR/metrics`.
    pub bind: Option<SocketAddr>,
}

/// How long the black box keeps what.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Telemetry {
    /// Raw readings and log lines.
    pub raw_retention_days: u32,
    /// Hourly min/max/mean of every metric.
    pub hourly_retention_days: u32,
    /// Readings waiting in memory for the database; past it the oldest are
    /// dropped and counted.
    pub max_backlog_readings: usize,
    /// A reading older than this (by its device time) is a fault.
    pub max_reading_age_days: u32,
    /// A reading this far ahead of the server's clock is a fault.
    pub max_reading_ahead_hours: u32,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            raw_retention_days: 7,
            hourly_retention_days: 365,
            max_backlog_readings: platform::telemetry::DEFAULT_MAX_BACKLOG,
            max_reading_age_days: 30,
            max_reading_ahead_hours: 24,
        }
    }
}

/// The commented default file that `telemark config` prints.
pub const DEFAULT_FILE: &str = r#"# Telemark configuration. Every key is optional; shown are the defaults.
# Environment variables override the file: TELEMARK__BROKER__MAX_CONNECTIONS=5000.
# Command-line flags override both.

[listeners]
tcp = "127.0.0.1:1883"        # MQTT over TCP
ws = "127.0.0.1:8083"         # MQTT over WebSocket, path /mqtt
# tls = "0.0.0.0:8883"        # MQTT over TLS (needs [tls])
# wss = "0.0.0.0:8084"        # MQTT over secure WebSocket (needs [tls])

# [tls]
# certificate = "/etc/telemark/server.crt"
# private_key = "/etc/telemark/server.key"
# client_ca = "/etc/telemark/clients-ca.crt"   # mTLS
# require_client_certificate = false

[auth]
# password_file = "/etc/telemark/passwd"       # telemark passwd FILE USER
# acl_file = "/etc/telemark/acl"               # Mosquitto ACL syntax
# allow_anonymous = true                       # false once a password file is set

[metrics]
# bind = "127.0.0.1:9183"                      # Prometheus /metrics

[telemetry]
raw_retention_days = 7                        # readings and device logs
hourly_retention_days = 365                   # hourly min/max/mean
max_backlog_readings = 4000000                # waiting for the database; oldest dropped past it
max_reading_age_days = 30                     # older device times are faults
max_reading_ahead_hours = 24                  # device times further ahead are faults

[webhooks]
enabled = true                                # false: no webhook is ever called
allowed_private_targets = []                  # e.g. ["alerts.corp.example", "10.0.0.5"]: inside targets webhooks may reach

[remote]
roles = ["operator-admin", "integrator-admin"]  # who may open terminals and tunnels
idle_secs = 900                               # a session without traffic ends
max_secs = 14400                              # and every session ends after this
per_device = 4                                # sessions on one device at once
total = 256                                   # sessions on this instance at once
# [remote.bastion]                            # reverse SSH tunnels go here
# host = "bastion.example.net"                # as devices reach it
# port = 22
# user = "telemark"
# host_key_file = "/etc/ssh/ssh_host_ed25519_key.pub"
# authorized_keys = "/home/telemark/.ssh/authorized_keys"   # kept by Telemark

[firmware]
max_image_mb = 2048                           # the largest image an upload may bring
trusted_keys = []                             # vendor ed25519 keys (base64url) whose detached signatures are accepted
ddi_poll_secs = 300                           # how long hawkBit DDI clients (SWUpdate, rauc-hawkbit) sleep between polls

[external_broker]                             # serve only: run behind a broker cluster instead of the embedded broker
# urls = "mqtt://node1:1883,mqtt://node2:1883"  # or mqtts:// (with ca_file); tried in order; --broker sets it
# username = "telemark-platform"              # default: this login with the database's internal secret, which the auth hooks accept
# password = "…"                              # TELEMARK__EXTERNAL_BROKER__PASSWORD
# ca_file = "/etc/telemark/broker-ca.pem"
share_group = "telemark"                      # instances split devices' messages: $share/telemark/dwr/+/+/…

[broker]
max_connections = 200000
max_packet_size = 16777216
max_topic_length = 1024
max_topic_levels = 32
max_subscriptions_per_client = 1000
receive_maximum = 1024
max_inflight = 1024
max_queued_messages = 10000
max_queued_bytes = 67108864                   # per session: topic + payload bytes waiting
max_queued_bytes_total = 1073741824           # all sessions together in memory; past it a session holding 64 KiB+ spills to data_dir/spill (or, without one, stops growing)
max_spilled_bytes_total = 17179869184         # all sessions together on disk in data_dir/spill; past it queues stop growing; 0: no spill
max_retained_messages = 1000000               # retained messages in all
max_retained_bytes = 1073741824               # their topic + payload bytes
max_retained_per_client = 1000                # retained messages one client may hold; past it 0x97
queue_policy = "drop-oldest"                  # or "drop-newest"
queue_qos0_offline = false
max_session_expiry = 604800
max_keep_alive = 65535
topic_alias_maximum = 256
connect_timeout_secs = 10
sys_interval_secs = 10
shutdown_timeout_secs = 5
hibernate_after_ms = 100                      # an idle TCP connection gives up its task; 0 never
client_id_must_match_username = false         # a login's client id must be its user name (devices on serve always)
# data_dir = "/var/lib/telemark/broker"       # journal of persistent sessions and retained messages (serve: DATA/broker)
fsync = "always"                              # "batch" (sync every fsync_interval_ms) or "never" (kill -9 safe, not power-cut safe)
fsync_interval_ms = 5
journal_compact_bytes = 67108864              # rewrite the journal as the live state past this and twice its last size
journal_record_synced_length = false          # power-cut tests only: write the synced length to journal.synced
"#;

impl Config {
    /// Defaults, then the file (if any), then the environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                text.parse::<toml::Table>()
                    .with_context(|| format!("{} is not valid TOML", path.display()))?
            }
            None => toml::Table::new(),
        };
        overlay_environment(&mut table, std::env::vars())?;
        let config: Config = toml::Value::Table(table)
            .try_into()
            .context("configuration")?;
        Ok(config)
    }

    /// Reports every problem at once.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut problems = Vec::new();
        if let Err(mut p) = self.broker.validate() {
            problems.append(&mut p);
        }
        if (self.listeners.tls.is_some() || self.listeners.wss.is_some()) && self.tls.is_none() {
            problems.push("listeners.tls and listeners.wss need a [tls] section".to_owned());
        }
        if let Some(urls) = &self.external_broker.urls {
            if let Err(e) = device_protocol::broker_url::BrokerAddress::parse_list(urls) {
                problems.push(format!("external_broker.urls: {e}"));
            }
            let group = &self.external_broker.share_group;
            if group.is_empty() || group.contains(['/', '+', '#']) {
                problems.push(format!(
                    "external_broker.share_group {group:?} must be one topic level without wildcards"
                ));
            }
        }
        let l = &self.listeners;
        if self.external_broker.urls.is_none()
            && l.tcp.is_none()
            && l.tls.is_none()
            && l.ws.is_none()
            && l.wss.is_none()
        {
            problems.push("no listener is configured".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("invalid configuration:\n  - {}", problems.join("\n  - "))
        }
    }
}

/// `TELEMARK__BROKER__MAX_CONNECTIONS=5` sets `broker.max_connections`. A
/// value that parses as TOML (number, boolean) is taken as such, otherwise as
/// a string.
fn overlay_environment(
    table: &mut toml::Table,
    vars: impl Iterator<Item = (String, String)>,
) -> anyhow::Result<()> {
    for (key, value) in vars {
        let Some(path) = key.strip_prefix("TELEMARK__") else {
            continue;
        };
        let parts: Vec<String> = path.split("__").map(|p| p.to_ascii_lowercase()).collect();
        let Some((last, sections)) = parts.split_last() else {
            continue;
        };
        let mut node = &mut *table;
        for section in sections {
            let entry = node
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            node = match entry {
                toml::Value::Table(t) => t,
                _ => bail!("{key}: {section} is not a section"),
            };
        }
        let parsed = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(value));
        node.insert(last.clone(), parsed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_file_is_the_default_config() {
        let table: toml::Table = DEFAULT_FILE.parse().expect("valid TOML");
        let config: Config = toml::Value::Table(table).try_into().expect("valid config");
        let defaults = Config::default();
        assert_eq!(config.listeners.tcp, defaults.listeners.tcp);
        assert_eq!(
            config.broker.max_queued_messages,
            defaults.broker.max_queued_messages
        );
        assert_eq!(
            config.telemetry.max_backlog_readings,
            defaults.telemetry.max_backlog_readings
        );
        config.validate().expect("valid");
    }

    #[test]
    fn environment_overrides_the_file() {
        let mut table: toml::Table = "[broker]\nmax_connections = 10\n".parse().expect("toml");
        overlay_environment(
            &mut table,
            [
                (
                    "TELEMARK__BROKER__MAX_CONNECTIONS".to_owned(),
                    "20".to_owned(),
                ),
                (
                    "TELEMARK__BROKER__QUEUE_POLICY".to_owned(),
                    "drop-newest".to_owned(),
                ),
                ("OTHER".to_owned(), "x".to_owned()),
            ]
            .into_iter(),
        )
        .expect("overlay");
        let config: Config = toml::Value::Table(table).try_into().expect("config");
        assert_eq!(config.broker.max_connections, 20);
        assert_eq!(config.broker.queue_policy, broker::QueuePolicy::DropNewest);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let table: toml::Table = "[broker]\nmax_conections = 10\n".parse().expect("toml");
        let result: Result<Config, _> = toml::Value::Table(table).try_into();
        assert!(result.is_err());
    }

    #[test]
    fn validation_reports_every_problem() {
        let mut config = Config::default();
        config.broker.receive_maximum = 0;
        config.listeners.tls = Some("127.0.0.1:8883".parse().expect("addr"));
        let err = config.validate().expect_err("invalid").to_string();
        assert!(
            err.contains("receive_maximum") && err.contains("[tls]"),
            "{err}"
        );
    }
}
