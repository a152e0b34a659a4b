//! Remote sessions on the device: a terminal on a PTY, a port forward to
//! the ports the device's `[remote]` section allows, and a reverse SSH
//! tunnel to the platform's bastion. Each is opened by a `remote_session`
//! task and then lives on its own topics (`device_protocol::session`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use device_protocol::session::{self, Frame, RemoteSession, SessionKind, SessionOpened};
use device_protocol::task::{TaskAnswer, TaskParams, TaskRequest};
use rumqttc::{AsyncClient, QoS};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use crate::channel::{AbortOnDrop, pump};
use crate::now_millis;
use crate::tasks::{failed, rejected, succeeded};

/// The `[remote]` section of the provisioning file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RemoteSettings {
    /// False: no terminal is opened here.
    pub terminal: bool,
    /// What the terminal runs: a login shell unless the device says.
    pub terminal_command: Vec<String>,
    /// Local ports a port forward may reach (on 127.0.0.1). Empty: none.
    pub allowed_ports: Vec<u16>,
    /// Sessions open at once.
    pub max_sessions: usize,
    /// The OpenSSH client a reverse tunnel runs.
    pub ssh_command: PathBuf,
    /// False: no reverse SSH tunnel is opened here.
    pub reverse_ssh: bool,
}

impl Default for RemoteSettings {
    fn default() -> Self {
        RemoteSettings {
            terminal: true,
            terminal_command: vec!["/bin/sh".into(), "-l".into()],
            allowed_ports: Vec::new(),
            max_sessions: 4,
            ssh_command: PathBuf::from("ssh"),
            reverse_ssh: true,
        }
    }
}

/// The open sessions of this device: where each one's input goes.
#[derive(Clone)]
pub struct Sessions {
    client: AsyncClient,
    model: String,
    device_id: String,
    settings: RemoteSettings,
    live: Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Frame>>>>,
}

impl Sessions {
    pub fn new(client: AsyncClient, p: &crate::Provisioning) -> Self {
        Sessions {
            client,
            model: p.model.clone(),
            device_id: p.device_id.clone(),
            settings: p.remote.clone(),
            live: Arc::default(),
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::UnboundedSender<Frame>>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn output_topic(&self, session: &str) -> String {
        session::output_topic(&self.model, &self.device_id, session)
    }

    /// A frame from the platform on `sessions/{id}/in`. One for a session
    /// this agent does not have (it restarted, or the session ended) is
    /// answered with an end, so the platform stops too.
    pub async fn input(&self, session: &str, payload: &[u8]) {
        let frame = match Frame::decode(payload) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(session, error = %e, "a malformed session frame; the session ends");
                self.end(
                    session,
                    &format!("the device received a malformed frame: {e}"),
                )
                .await;
                return;
            }
        };
        let sender = self.live().get(session).cloned();
        match sender {
            Some(s) if s.send(frame.clone()).is_ok() => {}
            _ if matches!(frame, Frame::End { .. }) => {}
            _ => {
                let _ = self
                    .client
                    .publish(
                        self.output_topic(session),
                        QoS::AtLeastOnce,
                        false,
                        Frame::End {
                            reason: "the device has no such session".into(),
                        }
                        .encode(),
                    )
                    .await;
            }
        }
    }

    async fn end(&self, session: &str, reason: &str) {
        if let Some(s) = self.live().remove(session) {
            let _ = s.send(Frame::End {
                reason: reason.to_owned(),
            });
        }
    }

    /// Ends every session: the connection to the platform is gone, and
    /// nobody is on the other end any more.
    pub fn end_all(&self) {
        for (_, s) in self.live().drain() {
            let _ = s.send(Frame::End {
                reason: "the device lost its connection to the platform".into(),
            });
        }
    }

    /// Runs a `remote_session` request: the answer says whether the
    /// session is open; the session then runs on its own.
    pub async fn open(&self, request: &TaskRequest) -> TaskAnswer {
        let params = match TaskParams::from_parts(&request.kind, &request.params) {
            Ok(TaskParams::RemoteSession(s)) => s,
            Ok(_) => return rejected(request, "not a remote session"),
            Err(why) => return rejected(request, why),
        };
        if let Err(why) = self.allowed(&params) {
            return rejected(request, why);
        }
        let (input, inbox) = mpsc::unbounded_channel();
        {
            let mut live = self.live();
            if live.len() >= self.settings.max_sessions {
                return rejected(
                    request,
                    format!(
                        "this device already has {} remote sessions open",
                        live.len()
                    ),
                );
            }
            if live.contains_key(&params.session) {
                return rejected(request, "this session is already open");
            }
            live.insert(params.session.clone(), input);
        }
        let opened = match params.kind {
            SessionKind::Terminal => self.start_terminal(&params, inbox),
            SessionKind::Tunnel => {
                self.start(params.clone(), inbox, Runner::Tunnel);
                Ok(None)
            }
            SessionKind::ReverseSsh => self.start_reverse(&params, inbox).await,
        };
        match opened {
            Ok(bound_port) => succeeded(
                request,
                SessionOpened {
                    session: params.session.clone(),
                    bound_port,
                },
            ),
            Err(why) => {
                self.live().remove(&params.session);
                failed(request, why)
            }
        }
    }

    fn allowed(&self, params: &RemoteSession) -> Result<(), String> {
        match params.kind {
            SessionKind::Terminal if !self.settings.terminal => {
                Err("this device allows no remote terminal".into())
            }
            SessionKind::Tunnel => {
                let port = params.port.unwrap_or(0);
                if self.settings.allowed_ports.contains(&port) {
                    Ok(())
                } else {
                    Err(format!(
                        "port {port} is not on this device's allowlist ({})",
                        list(&self.settings.allowed_ports)
                    ))
                }
            }
            SessionKind::ReverseSsh if !self.settings.reverse_ssh => {
                Err("this device allows no reverse SSH tunnel".into())
            }
            SessionKind::ReverseSsh
                if params
                    .reverse_ssh
                    .as_ref()
                    .is_none_or(|r| r.private_key.trim().is_empty()) =>
            {
                Err("a reverse SSH session came without its key".into())
            }
            _ => Ok(()),
        }
    }

    fn start_terminal(
        &self,
        params: &RemoteSession,
        inbox: mpsc::UnboundedReceiver<Frame>,
    ) -> Result<Option<u16>, String> {
        let (program, args) = self
            .settings
            .terminal_command
            .split_first()
            .ok_or("the device's terminal_command is empty")?;
        let (pty, pts) = pty_process::open().map_err(|e| format!("no PTY: {e}"))?;
        let size = pty_process::Size::new(params.rows.unwrap_or(24), params.cols.unwrap_or(80));
        pty.resize(size)
            .map_err(|e| format!("cannot size the PTY: {e}"))?;
        let child = pty_process::Command::new(program)
            .args(args)
            .env("TERM", "xterm-256color")
            .kill_on_drop(true)
            .spawn(pts)
            .map_err(|e| format!("cannot start {program}: {e}"))?;
        // A second handle on the PTY for resizes while the pump owns it.
        let sizes = std::os::fd::AsFd::as_fd(&pty)
            .try_clone_to_owned()
            .map_err(|e| format!("cannot share the PTY: {e}"))?;
        self.start(params.clone(), inbox, Runner::Terminal(pty, child, sizes));
        Ok(None)
    }

    async fn start_reverse(
        &self,
        params: &RemoteSession,
        inbox: mpsc::UnboundedReceiver<Frame>,
    ) -> Result<Option<u16>, String> {
        let Some(r) = &params.reverse_ssh else {
            return Err("no bastion named".into());
        };
        let dir = tempfile::tempdir().map_err(|e| format!("no temporary directory: {e}"))?;
        let key = dir.path().join("id");
        let known = dir.path().join("known_hosts");
        write_private(&key, r.private_key.as_bytes())?;
        write_private(&known, format!("{}\n", r.known_host).as_bytes())?;
        let mut child = tokio::process::Command::new(&self.settings.ssh_command)
            .arg("-N")
            .arg("-T")
            .args(["-o", "BatchMode=yes"])
            .args(["-o", "ExitOnForwardFailure=yes"])
            .args(["-o", "StrictHostKeyChecking=yes"])
            .args(["-o", "IdentitiesOnly=yes"])
            .args(["-o", "ServerAliveInterval=30"])
            .args(["-o", "ServerAliveCountMax=3"])
            .args(["-o", "LogLevel=INFO"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known.display()))
            .arg("-i")
            .arg(&key)
            .args(["-p", &r.port.to_string()])
            .args(["-R", &format!("0:127.0.0.1:{}", r.target_port)])
            .arg(format!("{}@{}", r.user, r.host))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.settings.ssh_command.display()))?;
        let stderr = child.stderr.take().ok_or("ssh has no stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let mut said = Vec::new();
        let bound = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                // "Allocated port 41234 for remote forward to 127.0.0.1:22"
                if let Some(port) = line
                    .strip_prefix("Allocated port ")
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|p| p.parse::<u16>().ok())
                {
                    return Some(port);
                }
                if said.len() < 10 {
                    said.push(line);
                }
            }
            None
        })
        .await;
        let port = match bound {
            Ok(Some(port)) => port,
            Ok(None) => {
                let _ = child.kill().await;
                return Err(format!("ssh to the bastion failed: {}", said.join(" / ")));
            }
            Err(_) => {
                let _ = child.kill().await;
                return Err("the bastion did not bind a port within 30 s".into());
            }
        };
        // Keep reading ssh's stderr so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.start(params.clone(), inbox, Runner::Reverse(child, dir));
        Ok(Some(port))
    }

    fn start(&self, params: RemoteSession, inbox: mpsc::UnboundedReceiver<Frame>, runner: Runner) {
        let this = self.clone();
        tokio::spawn(async move {
            let session = params.session.clone();
            let reason = this.run(params, inbox, runner).await;
            tracing::info!(%session, %reason, "remote session ended");
            this.live().remove(&session);
        });
    }

    /// Runs one session until it ends; returns why.
    async fn run(
        &self,
        params: RemoteSession,
        mut inbox: mpsc::UnboundedReceiver<Frame>,
        runner: Runner,
    ) -> String {
        let last = Arc::new(AtomicI64::new(now_millis()));
        let (out, mut outgoing) = mpsc::channel::<Frame>(16);
        let publisher = {
            let (client, topic, last) = (
                self.client.clone(),
                self.output_topic(&params.session),
                last.clone(),
            );
            AbortOnDrop(tokio::spawn(async move {
                while let Some(frame) = outgoing.recv().await {
                    last.store(now_millis(), Ordering::Relaxed);
                    if client
                        .publish(topic.clone(), QoS::AtLeastOnce, false, frame.encode())
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }))
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(params.max_secs.into());
        let idle = i64::from(params.idle_secs) * 1000;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut channels: HashMap<u32, mpsc::UnboundedSender<Frame>> = HashMap::new();
        let mut done = tokio::task::JoinSet::new();
        let mut terminal_sizes = None;
        let mut reverse = None;
        match runner {
            Runner::Terminal(pty, child, sizes) => {
                let (read, write) = pty.into_split();
                terminal_sizes = Some(sizes);
                let (input, channel_inbox) = mpsc::unbounded_channel();
                channels.insert(0, input);
                let out = out.clone();
                done.spawn(async move {
                    let pumped = pump(0, params.window, read, write, channel_inbox, out).await;
                    (0u32, pumped, Some(child))
                });
            }
            Runner::Tunnel => {}
            Runner::Reverse(child, dir) => reverse = Some((child, dir)),
        }
        let mut ended_by_platform = false;
        let reason = loop {
            tokio::select! {
                frame = inbox.recv() => {
                    last.store(now_millis(), Ordering::Relaxed);
                    match frame {
                        None => { ended_by_platform = true; break "the session ended".to_owned() }
                        Some(Frame::End { reason }) => {
                            ended_by_platform = true;
                            break if reason.is_empty() { "ended by the platform".to_owned() } else { reason };
                        }
                        Some(Frame::Resize { cols, rows }) => {
                            if let Some(fd) = &terminal_sizes {
                                // The kernel tells the shell (SIGWINCH).
                                let size = rustix::termios::Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
                                let _ = rustix::termios::tcsetwinsize(fd, size);
                            }
                        }
                        Some(Frame::Open { channel, port }) => {
                            let refused = if params.kind != SessionKind::Tunnel {
                                Some("this session carries no connections".to_owned())
                            } else if Some(port) != params.port || !self.settings.allowed_ports.contains(&port) {
                                Some(format!("port {port} is not on this device's allowlist ({})", list(&self.settings.allowed_ports)))
                            } else if channels.len() >= session::MAX_CHANNELS as usize {
                                Some(format!("at most {} connections per session", session::MAX_CHANNELS))
                            } else if channels.contains_key(&channel) {
                                Some("channel already open".to_owned())
                            } else {
                                None
                            };
                            if let Some(reason) = refused {
                                let _ = out.send(Frame::Close { channel, reason }).await;
                                continue;
                            }
                            let (input, channel_inbox) = mpsc::unbounded_channel();
                            channels.insert(channel, input);
                            let (out, window) = (out.clone(), params.window);
                            done.spawn(async move {
                                let pumped = match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                                    Ok(stream) => {
                                        let _ = stream.set_nodelay(true);
                                        let (read, write) = stream.into_split();
                                        pump(channel, window, read, write, channel_inbox, out).await
                                    }
                                    Err(e) => Err(format!("127.0.0.1:{port} on the device: {e}")),
                                };
                                (channel, pumped, None)
                            });
                        }
                        Some(frame @ (Frame::Data { .. } | Frame::Ack { .. } | Frame::Close { .. })) => {
                            let channel = match &frame {
                                Frame::Data { channel, .. } | Frame::Ack { channel, .. } | Frame::Close { channel, .. } => *channel,
                                _ => continue,
                            };
                            match channels.get(&channel) {
                                Some(c) => { let _ = c.send(frame); }
                                None if matches!(frame, Frame::Data { .. }) => {
                                    let _ = out.send(Frame::Close { channel, reason: "no such channel".into() }).await;
                                }
                                None => {}
                            }
                        }
                    }
                }
                Some(finished) = done.join_next(), if !done.is_empty() => {
                    let Ok((channel, pumped, child)) = finished else { continue };
                    channels.remove(&channel);
                    if let Some(mut child) = child {
                        // The terminal's program: its exit ends the session.
                        let status = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
                        break match status {
                            Ok(Ok(s)) => format!("the shell exited ({s})"),
                            _ => pumped.err().unwrap_or_else(|| "the terminal closed".into()),
                        };
                    }
                    if let Err(reason) = pumped {
                        let _ = out.send(Frame::Close { channel, reason }).await;
                    }
                }
                exited = async { match reverse.as_mut() { Some((child, _)) => child.wait().await.ok(), None => std::future::pending().await } } => {
                    break format!("ssh to the bastion ended ({})", exited.map(|s| s.to_string()).unwrap_or_default());
                }
                _ = tokio::time::sleep_until(deadline) => {
                    break format!("the session reached its maximum of {} s", params.max_secs);
                }
                _ = tick.tick() => {
                    // A reverse tunnel's traffic never passes here: its
                    // maximum length is its TTL.
                    if params.kind != SessionKind::ReverseSsh && now_millis() - last.load(Ordering::Relaxed) > idle {
                        break format!("idle for {} s", params.idle_secs);
                    }
                }
            }
        };
        drop(channels);
        done.abort_all();
        if let Some((mut child, dir)) = reverse {
            let _ = child.kill().await;
            drop(dir);
        }
        if !ended_by_platform {
            let _ = out
                .send(Frame::End {
                    reason: reason.clone(),
                })
                .await;
        }
        drop(out);
        // Let the last frames leave before the publisher goes.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let mut publisher = publisher;
            let _ = (&mut publisher.0).await;
        })
        .await;
        reason
    }
}

enum Runner {
    Terminal(
        pty_process::Pty,
        tokio::process::Child,
        std::os::fd::OwnedFd,
    ),
    Tunnel,
    Reverse(tokio::process::Child, tempfile::TempDir),
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(bytes)
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn list(ports: &[u16]) -> String {
    if ports.is_empty() {
        "none".into()
    } else {
        ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}
