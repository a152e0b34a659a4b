//! `telemark`: the MQTT broker and device management platform in one binary.

mod config;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use broker::{AllowAll, Authenticator, Broker, FileAuthenticator, ListenerKind, TlsFiles};
use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;
use tracing::info;

use crate::config::Config;

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
            let mut config = Config::load(args.config.as_deref())?;
            args.apply(&mut config);
            config.validate()?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(run_broker(config))
        }
        Command::Passwd {
            file,
            user,
            password,
        } => passwd(&file, &user, password),
        Command::Config => {
            print!("{}", config::DEFAULT_FILE);
            Ok(())
        }
    }
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
    let hash = broker::auth::hash_password(&password).map_err(anyhow::Error::msg)?;
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

async fn run_broker(config: Config) -> anyhow::Result<()> {
    let auth: Arc<dyn Authenticator> =
        if config.auth.password_file.is_some() || config.auth.acl_file.is_some() {
            let allow_anonymous = config
                .auth
                .allow_anonymous
                .unwrap_or(config.auth.password_file.is_none());
            Arc::new(FileAuthenticator::new(
                config.auth.password_file.as_deref(),
                config.auth.acl_file.as_deref(),
                allow_anonymous,
            )?)
        } else {
            if config.auth.allow_anonymous == Some(false) {
                anyhow::bail!("auth.allow_anonymous = false needs auth.password_file");
            }
            Arc::new(AllowAll)
        };
    let broker = Broker::new(config.broker.clone(), auth);
    let acceptor = match &config.tls {
        Some(tls) => Some(
            TlsFiles {
                certificate: tls.certificate.clone(),
                private_key: tls.private_key.clone(),
                client_ca: tls.client_ca.clone(),
                require_client_certificate: tls.require_client_certificate,
            }
            .acceptor()?,
        ),
        None => None,
    };
    let l = &config.listeners;
    let mut listeners = Vec::new();
    for (addr, kind) in [
        (l.tcp, Some(ListenerKind::Tcp)),
        (l.tls, acceptor.clone().map(ListenerKind::Tls)),
        (l.ws, Some(ListenerKind::WebSocket)),
        (l.wss, acceptor.clone().map(ListenerKind::SecureWebSocket)),
    ] {
        let (Some(addr), Some(kind)) = (addr, kind) else {
            continue;
        };
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the {} listener to {addr}", kind.name()))?;
        info!(listener = kind.name(), address = %listener.local_addr()?, "listening");
        listeners.push(broker.serve(listener, kind));
    }
    if let Some(addr) = config.metrics.bind {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics listener to {addr}"))?;
        info!(address = %listener.local_addr()?, "metrics on /metrics");
        let metrics_broker = broker.clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let broker = metrics_broker.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        broker.stats().prometheus(),
                    )
                }
            }),
        );
        let shutdown_broker = broker.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown_broker.shutting_down().await })
                .await;
        });
    }
    info!(version = env!("CARGO_PKG_VERSION"), "telemark broker ready");
    shutdown_signal().await;
    info!("shutting down");
    broker.shutdown().await;
    for l in listeners {
        l.abort();
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
