//! One rmqtt node: `rmqtt-cluster-node ID MQTT_ADDR GRPC_ADDR PLUGINS_DIR`.
//! The plugin directory holds the cluster's peer list and the HTTP auth
//! hook's settings, as an operator would write them for `rmqttd`.

use std::net::SocketAddr;
use std::time::Duration;

use rmqtt::context::ServerContext;
use rmqtt::net::Builder;
use rmqtt::node::Node;
use rmqtt::server::MqttServer;

#[tokio::main]
async fn main() -> rmqtt::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, id, mqtt, grpc, plugins] = args.as_slice() else {
        return Err(anyhow_error("usage: rmqtt-cluster-node ID MQTT_ADDR GRPC_ADDR PLUGINS_DIR"));
    };
    let id: u64 = id.parse().map_err(|_| anyhow_error("ID is a number"))?;
    let mqtt: SocketAddr = mqtt.parse().map_err(|_| anyhow_error("MQTT_ADDR"))?;
    let grpc: SocketAddr = grpc.parse().map_err(|_| anyhow_error("GRPC_ADDR"))?;
    // Busy thresholds far above a test machine's load: the node never refuses.
    let node = Node::new(id, 1000.0, 1000.0, Duration::from_secs(5));
    let scx = ServerContext::new()
        .node(node)
        .plugins_config_dir(plugins.as_str())
        .build()
        .await;
    scx.node.start_grpc_server(scx.clone(), grpc, true, false);
    rmqtt_cluster_broadcast::register(&scx, true, true).await?;
    rmqtt_auth_http::register(&scx, true, false).await?;
    rmqtt_shared_subscription::register(&scx, true, false).await?;
    rmqtt_retainer::register(&scx, true, false).await?;
    MqttServer::new(scx)
        .listener(
            Builder::new()
                .name("external/tcp")
                .laddr(mqtt)
                .allow_anonymous(false)
                .bind()?
                .tcp()?,
        )
        .build()
        .run()
        .await?;
    Ok(())
}

fn anyhow_error(message: &str) -> rmqtt::Error {
    rmqtt::Error::msg(message.to_owned())
}
