//! What `broker` and `serve` share: the broker's listeners, `/metrics`,
//! an HTTP server that stops with the broker, and the shutdown signal.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use broker::{AllowAll, Authenticator, Broker, FileAuthenticator, ListenerKind, TlsFiles};
use tokio::net::TcpListener;
use tracing::info;

use crate::config::Config;

/// A running broker and its listener tasks.
pub(crate) struct RunningBroker {
    pub(crate) broker: Broker,
    listeners: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningBroker {
    pub(crate) async fn stop(self) {
        self.broker.shutdown().await;
        for l in self.listeners {
            l.abort();
        }
    }
}

/// `/metrics` without authentication, for `[metrics] bind`: an address
/// of its own that the operator chooses to expose to a scraper.
fn metrics_route(render: api::MetricsRenderer) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let render = render.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    render(),
                )
            }
        }),
    )
}

/// The Prometheus text: the embedded broker's figures when there is one,
/// and the ingest's when there is one.
pub(crate) fn metrics_renderer(
    broker: Option<&Broker>,
    ingest: Option<Arc<platform::telemetry::Ingest>>,
) -> api::MetricsRenderer {
    let broker = broker.cloned();
    Arc::new(move || {
        let mut text = broker
            .as_ref()
            .map(|b| b.stats().prometheus())
            .unwrap_or_default();
        if let Some(ingest) = &ingest {
            text.push_str(&ingest_prometheus(&ingest.counters));
        }
        text
    })
}

fn ingest_prometheus(c: &platform::telemetry::IngestCounters) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let mut out = String::new();
    for (name, help, value) in [
        (
            "messages",
            "device messages read from the broker",
            c.messages.load(Relaxed),
        ),
        (
            "readings_stored",
            "readings written to the store",
            c.readings_stored.load(Relaxed),
        ),
        (
            "log_lines_stored",
            "device log lines written to the store",
            c.log_lines_stored.load(Relaxed),
        ),
        (
            "rejected",
            "messages that broke the device contract",
            c.rejected.load(Relaxed),
        ),
        (
            "unknown_devices",
            "messages on topics no registered device owns",
            c.unknown_devices.load(Relaxed),
        ),
        (
            "write_failures",
            "batches the store refused (kept and retried)",
            c.write_failures.load(Relaxed),
        ),
        (
            "readings_dropped",
            "readings dropped, oldest first, past the backlog bound",
            c.readings_dropped.load(Relaxed),
        ),
        (
            "log_lines_dropped",
            "device log lines dropped, oldest first, past the backlog bound",
            c.log_lines_dropped.load(Relaxed),
        ),
        (
            "acknowledgements_released",
            "acknowledgements sent to devices (through the broker) once their messages were written",
            c.acknowledgements_released.load(Relaxed),
        ),
        (
            "acknowledgements_lost",
            "acknowledgements given up unwritten; their devices send the messages again",
            c.acknowledgements_lost.load(Relaxed),
        ),
    ] {
        out.push_str(&format!(
            "# HELP telemark_ingest_{name}_total {help}\n# TYPE telemark_ingest_{name}_total counter\ntelemark_ingest_{name}_total {value}\n"
        ));
    }
    out
}

/// Resolves when `broker` begins to shut down.
pub(crate) fn broker_stopping(broker: &Broker) -> impl Future<Output = ()> + Send + 'static {
    let broker = broker.clone();
    async move { broker.shutting_down().await }
}

/// Serves `app` on `addr` until `stopping` resolves.
pub(crate) async fn serve_http(
    addr: SocketAddr,
    app: axum::Router,
    stopping: impl Future<Output = ()> + Send + 'static,
    what: &str,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} listener to {addr}"))?;
    let local = listener.local_addr()?;
    // A keystroke in a terminal is one small WebSocket frame: Nagle would
    // hold it behind the last unacknowledged one.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(stopping)
        .await;
    });
    Ok(local)
}

pub(crate) async fn start_broker(config: &Config, broker: Broker) -> anyhow::Result<RunningBroker> {
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
    Ok(RunningBroker { broker, listeners })
}

/// `[metrics] bind`: `/metrics` on an address of its own, without login.
pub(crate) async fn serve_metrics(
    config: &Config,
    stopping: impl Future<Output = ()> + Send + 'static,
    render: api::MetricsRenderer,
) -> anyhow::Result<()> {
    if let Some(addr) = config.metrics.bind {
        let local = serve_http(addr, metrics_route(render), stopping, "metrics").await?;
        info!(address = %local, "metrics on /metrics");
    }
    Ok(())
}

pub(crate) async fn run_broker(config: Config) -> anyhow::Result<()> {
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
    let broker =
        Broker::open(config.broker.clone(), auth).context("opening the broker's journal")?;
    let running = start_broker(&config, broker).await?;
    serve_metrics(
        &config,
        broker_stopping(&running.broker),
        metrics_renderer(Some(&running.broker), None),
    )
    .await?;
    info!(version = env!("CARGO_PKG_VERSION"), "telemark broker ready");
    shutdown_signal().await;
    info!("shutting down");
    running.stop().await;
    Ok(())
}

pub(crate) async fn shutdown_signal() {
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
