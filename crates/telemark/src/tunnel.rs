//! `telemark tunnel`: a port on the engineer's machine whose TCP
//! connections reach a port on a device, carried by the platform's
//! WebSocket and the device's own MQTT connection. No bastion, no inbound
//! port on either side.

use std::collections::HashMap;
use std::net::IpAddr;

use anyhow::{Context, bail};
use device_protocol::session::Frame;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[derive(Debug, clap::Args)]
pub(crate) struct TunnelArgs {
    /// The device: its id, or its exact name, serial number or MAC.
    pub device: String,
    /// The port on the device (on its `[remote] allowed_ports`).
    #[arg(long, default_value_t = 22)]
    pub remote_port: u16,
    /// The port to listen on here.
    #[arg(long)]
    pub local_port: u16,
    /// The address to listen on here.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,
    #[command(flatten)]
    pub access: PlatformAccess,
}

/// Where the platform is and who calls it, for the commands that use its API.
#[derive(Debug, clap::Args)]
pub(crate) struct PlatformAccess {
    /// The platform's URL.
    #[arg(long, env = "TELEMARK_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// An API token (`tmk_…`) of a user allowed to do this.
    #[arg(long, env = "TELEMARK_TOKEN", hide_env_values = true)]
    pub token: String,
}

impl PlatformAccess {
    /// A client, the base URL and the Authorization header.
    pub(crate) fn client(&self) -> (reqwest::Client, String, String) {
        (
            reqwest::Client::new(),
            self.url.trim_end_matches('/').to_owned(),
            format!("Bearer {}", self.token),
        )
    }
}

pub(crate) async fn run(args: TunnelArgs) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (http, base, auth) = args.access.client();
    let device_id = find_device(&http, &base, &auth, &args.device).await?;
    let listener = tokio::net::TcpListener::bind((args.bind, args.local_port))
        .await
        .with_context(|| format!("listening on {}:{}", args.bind, args.local_port))?;
    let response = http
        .post(format!("{base}/api/v1/devices/{device_id}/sessions"))
        .header("Authorization", &auth)
        .json(&serde_json::json!({ "kind": "tunnel", "port": args.remote_port }))
        .send()
        .await
        .context("reaching the platform")?;
    let session: serde_json::Value = answer(response).await?;
    let stream_path = session["stream"]
        .as_str()
        .context("no stream in the answer")?;
    let window = session["window"]
        .as_u64()
        .and_then(|w| u32::try_from(w).ok())
        .context("no window in the answer")?;
    let ws_url = format!(
        "{}{stream_path}",
        base.replacen("https://", "wss://", 1)
            .replacen("http://", "ws://", 1)
    );
    let mut request = ws_url.as_str().into_client_request()?;
    request.headers_mut().insert("Authorization", auth.parse()?);
    let (socket, _) = tokio_tungstenite::connect_async_with_config(request, None, true)
        .await
        .context("opening the session's stream")?;
    let (mut sink, mut stream) = socket.split();
    // Wait until the device has opened its end.
    loop {
        match stream.next().await {
            Some(Ok(Message::Text(text))) => {
                let event: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                match event["event"].as_str() {
                    Some("opened") => break,
                    Some("ended") => bail!(
                        "the session ended: {}",
                        event["reason"].as_str().unwrap_or("no reason given")
                    ),
                    _ => {}
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => bail!("the session's stream failed: {e}"),
            None => bail!("the platform closed the session's stream"),
        }
    }
    println!(
        "Forwarding {}:{} to port {} of device {} (Ctrl-C ends it).",
        args.bind, args.local_port, args.remote_port, args.device
    );
    let (out, mut outgoing) = mpsc::channel::<Frame>(64);
    let mut channels: HashMap<u32, mpsc::UnboundedSender<Frame>> = HashMap::new();
    let mut pumps = tokio::task::JoinSet::new();
    let mut next_channel = 1u32;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let reason = loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (connection, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => { eprintln!("accept: {e}"); continue; }
                };
                if channels.len() >= device_protocol::session::MAX_CHANNELS as usize {
                    eprintln!("{peer}: refused, {} connections are open", channels.len());
                    continue;
                }
                let channel = next_channel;
                next_channel = next_channel.wrapping_add(1).max(1);
                let _ = connection.set_nodelay(true);
                // The open goes before the pump's first data on the same queue.
                if out.send(Frame::Open { channel, port: args.remote_port }).await.is_err() {
                    break "the session ended".to_owned();
                }
                let (input, inbox) = mpsc::unbounded_channel();
                channels.insert(channel, input);
                let out = out.clone();
                pumps.spawn(async move {
                    let (read, write) = connection.into_split();
                    let pumped = agent::channel::pump(channel, window, read, write, inbox, out).await;
                    (channel, peer, pumped)
                });
            }
            Some(frame) = outgoing.recv() => {
                if sink.send(Message::Binary(frame.encode().into())).await.is_err() {
                    break "the platform closed the session's stream".to_owned();
                }
            }
            message = stream.next() => match message {
                Some(Ok(Message::Binary(bytes))) => match Frame::decode(&bytes) {
                    Ok(frame @ (Frame::Data { .. } | Frame::Ack { .. } | Frame::Close { .. })) => {
                        let channel = match &frame {
                            Frame::Data { channel, .. } | Frame::Ack { channel, .. } | Frame::Close { channel, .. } => *channel,
                            _ => continue,
                        };
                        if let Some(c) = channels.get(&channel) {
                            let _ = c.send(frame);
                        }
                    }
                    Ok(Frame::End { reason }) => break reason,
                    Ok(_) => {}
                    Err(e) => break format!("the platform sent a malformed frame: {e}"),
                },
                Some(Ok(Message::Text(text))) => {
                    let event: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                    if event["event"] == "ended" {
                        break event["reason"].as_str().unwrap_or("ended").to_owned();
                    }
                }
                Some(Ok(Message::Close(_))) | None => break "the platform closed the session's stream".to_owned(),
                Some(Ok(_)) => {}
                Some(Err(e)) => break format!("the session's stream failed: {e}"),
            },
            Some(finished) = pumps.join_next(), if !pumps.is_empty() => {
                let Ok((channel, peer, pumped)) = finished else { continue };
                channels.remove(&channel);
                if let Err(reason) = pumped {
                    eprintln!("{peer}: {reason}");
                    let _ = out.send(Frame::Close { channel, reason }).await;
                }
            }
            _ = &mut interrupted => {
                let end = Frame::End { reason: "the tunnel was stopped".into() };
                let _ = sink.send(Message::Binary(end.encode().into())).await;
                let _ = sink.close().await;
                break "stopped".to_owned();
            }
        }
    };
    pumps.abort_all();
    println!("Tunnel closed: {reason}");
    Ok(())
}

/// The JSON of a 2xx answer, or the problem's detail as the error.
pub(crate) async fn answer(response: reqwest::Response) -> anyhow::Result<serde_json::Value> {
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    if status.is_success() {
        Ok(body)
    } else {
        bail!(
            "{status}: {}",
            body["detail"].as_str().unwrap_or("no detail given")
        )
    }
}

/// A device id from an id, or from an exact name, serial number or MAC.
async fn find_device(
    http: &reqwest::Client,
    base: &str,
    auth: &str,
    device: &str,
) -> anyhow::Result<i64> {
    if let Ok(id) = device.parse::<i64>() {
        return Ok(id);
    }
    let response = http
        .get(format!("{base}/api/v1/devices"))
        .query(&[("search", device), ("limit", "50")])
        .header("Authorization", auth)
        .send()
        .await
        .context("reaching the platform")?;
    let page = answer(response).await?;
    let exact: Vec<i64> = page["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| {
            ["name", "serial", "mac"].iter().any(|k| {
                d[k].as_str()
                    .is_some_and(|v| v.eq_ignore_ascii_case(device))
            })
        })
        .filter_map(|d| d["id"].as_i64())
        .collect();
    match exact.as_slice() {
        [id] => Ok(*id),
        [] => bail!("no device is named {device:?}"),
        _ => bail!("{} devices match {device:?}; give its id", exact.len()),
    }
}
