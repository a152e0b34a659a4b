//! One rmqtt node: `rmqtt-cluster-node ID MQTT_ADDR GRPC_ADDR PLUGINS_DIR`.
//! The plugin directory holds each plugin's settings as an operator writes
//! them for `rmqttd` (the cluster's peer list, the HTTP auth hook, the
//! shared-subscription strategy, the retainer, the $SYS topics); a plugin
//! without its file stays off.

use std::net::SocketAddr;
use std::time::Duration;

use rmqtt::context::ServerContext;
use rmqtt::hook::{Handler, HookResult, Parameter, ReturnType, Type};
use rmqtt::net::Builder;
use rmqtt::node::Node;
use rmqtt::server::MqttServer;

/// rmqtt's log lines (plugins starting, hook errors) on stderr, at the
/// level `RMQTT_LOG` names (warn by default).
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        eprintln!("{} {}: {}", record.level(), record.target(), record.args());
    }
    fn flush(&self) {}
}

static LOGGER: StderrLog = StderrLog;

#[tokio::main]
async fn main() -> rmqtt::Result<()> {
    let level = std::env::var("RMQTT_LOG")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(log::LevelFilter::Warn);
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
    let args: Vec<String> = std::env::args().collect();
    let [_, id, mqtt, grpc, plugins] = args.as_slice() else {
        return Err(anyhow_error(
            "usage: rmqtt-cluster-node ID MQTT_ADDR GRPC_ADDR PLUGINS_DIR",
        ));
    };
    let id: u64 = id.parse().map_err(|_| anyhow_error("ID is a number"))?;
    let mqtt: SocketAddr = mqtt.parse().map_err(|_| anyhow_error("MQTT_ADDR"))?;
    let grpc: SocketAddr = grpc.parse().map_err(|_| anyhow_error("GRPC_ADDR"))?;
    // Busy thresholds far above a test machine's load: the node never refuses.
    let node = Node::new(id, 1000.0, 1000.0, Duration::from_secs(5));
    let scx = ServerContext::new()
        .node(node)
        // A fleet connecting at once on a test machine is not a node too
        // busy to take logins.
        .busy_check_enable(false)
        .plugins_config_dir(plugins.as_str())
        .build()
        .await;
    scx.node.start_grpc_server(scx.clone(), grpc, true, false);
    // A plugin runs when its configuration file is in the directory.
    let on = |name: &str| {
        std::path::Path::new(plugins)
            .join(format!("{name}.toml"))
            .exists()
    };
    if on("rmqtt-auth-http") {
        rmqtt_auth_http::register(&scx, true, false).await?;
    }
    if on("rmqtt-shared-subscription") {
        rmqtt_shared_subscription::register(&scx, true, false).await?;
    }
    if on("rmqtt-retainer") {
        rmqtt_retainer::register(&scx, true, false).await?;
    }
    if on("rmqtt-sys-topic") {
        rmqtt_sys_topic::register(&scx, true, false).await?;
    }
    // Every message the node drops, and why, on stderr: a loss through the
    // cluster shows in the node's log instead of only in a count.
    let dropped = scx.extends.hook_mgr().register();
    dropped
        .add(Type::MessageDropped, Box::new(DroppedMessages))
        .await;
    dropped.start().await;
    // Last, as rmqttd registers it: the cluster wraps what the others set up.
    if on("rmqtt-cluster-broadcast") {
        rmqtt_cluster_broadcast::register(&scx, true, true).await?;
    }
    MqttServer::new(scx)
        .listener(
            Builder::new()
                .name("external/tcp")
                .laddr(mqtt)
                .allow_anonymous(false)
                // As docs/deployment.md advises for the listener the
                // platform's ingest uses: rmqtt's defaults (16 in flight,
                // 1,000 queued) cap a subscriber that acknowledges after a
                // database write at 16 per write and drop what queues past
                // 1,000.
                .max_inflight(std::num::NonZeroU16::new(1024).unwrap_or(std::num::NonZeroU16::MIN))
                .max_mqueue_len(1_000_000)
                .bind()?
                .tcp()?,
        )
        .build()
        .run()
        .await?;
    Ok(())
}

/// Logs each dropped message at warn, with its reason.
struct DroppedMessages;

#[async_trait::async_trait]
impl Handler for DroppedMessages {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        if let Parameter::MessageDropped(to, from, publish, reason) = param {
            log::warn!(
                "message dropped: topic {}, from {from:?}, to {to:?}, reason {reason:?}",
                publish.topic
            );
        }
        (true, acc)
    }
}

fn anyhow_error(message: &str) -> rmqtt::Error {
    rmqtt::Error::msg(message.to_owned())
}
