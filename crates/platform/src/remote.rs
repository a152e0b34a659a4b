//! Remote access: terminals, port forwards and reverse SSH tunnels to
//! devices, over the devices' own MQTT connections.
//!
//! A session is opened as a `remote_session` task (so it is queued,
//! delivered, timed out and listed like every task) and then relays frames
//! between one client (the console's terminal, `telemark tunnel`) and the
//! device. The relay checks both directions of every channel against the
//! session's window, so neither end can make the platform hold more than
//! one window per channel; a session whose client or device breaks the
//! protocol, goes away or stays idle is ended, with the reason told to both.
//!
//! Sessions live in the memory of the instance the device is connected to
//! (the embedded broker's instance); the system log keeps their history.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use device_protocol::session::{
    self, Frame, ReceiveWindow, RemoteSession, ReverseSsh, SessionKind, SessionOpened,
};
use serde::Serialize;
use store::{NewAuditEntry, Scope, Store, StoreError};
use tokio::sync::mpsc;

use crate::accounts::Role;
use crate::tasks::{TaskService, TaskTransport};

/// How long an open request waits for an offline device.
const OPEN_EXPIRY_SECS: i64 = 30;
/// How long a device has to open a session once it has the request.
const OPEN_TIMEOUT_SECS: i64 = 45;
/// How long an opened session waits for its client to attach.
const ATTACH_WITHIN: Duration = Duration::from_secs(60);

/// The operator's rules for remote access (`[remote]` of the config).
#[derive(Debug, Clone)]
pub struct RemoteSettings {
    /// Roles that may open sessions.
    pub roles: Vec<Role>,
    /// A session ends after this long without traffic.
    pub idle_secs: u32,
    /// And after this long whatever happens.
    pub max_secs: u32,
    /// Sessions per device at once.
    pub per_device: usize,
    /// Sessions on this instance at once.
    pub total: usize,
    /// Where reverse SSH tunnels go; None: no reverse tunnels.
    pub bastion: Option<Bastion>,
}

impl Default for RemoteSettings {
    fn default() -> Self {
        RemoteSettings {
            roles: vec![Role::OperatorAdmin, Role::IntegratorAdmin],
            idle_secs: 900,
            max_secs: 4 * 3600,
            per_device: 4,
            total: 256,
            bastion: None,
        }
    }
}

/// The SSH server reverse tunnels bind their port on.
#[derive(Debug, Clone)]
pub struct Bastion {
    /// As devices reach it.
    pub host: String,
    pub port: u16,
    pub user: String,
    /// Its host key, `ssh-ed25519 AAAA…` (from `/etc/ssh/ssh_host_ed25519_key.pub`).
    pub host_key: String,
    /// The `authorized_keys` file of `user` that Telemark keeps: one line
    /// per open tunnel, limited to remote forwarding, expiring with it.
    pub authorized_keys: std::path::PathBuf,
}

/// Why a session was refused.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{field}: {message}")]
    Field {
        field: &'static str,
        message: String,
    },
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Task(#[from] crate::tasks::TaskError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Bastion(String),
}

/// What a user asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenRequest {
    pub kind: SessionKind,
    pub cols: Option<u16>,
    pub rows: Option<u16>,
    /// Tunnel: the device port; reverse SSH: the port the bastion's end
    /// leads to (22 unless given).
    pub port: Option<u16>,
    pub window: Option<u32>,
    /// The session's longest life (a reverse tunnel's TTL); the operator's
    /// `max_secs` unless shorter.
    pub ttl_secs: Option<u32>,
}

/// Who opens a session.
#[derive(Debug, Clone)]
pub struct Opener {
    pub username: String,
    pub role: Role,
    pub scope: Scope,
    pub address: Option<String>,
}

/// A session as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SessionInfo {
    pub id: String,
    pub device_id: i64,
    pub kind: &'static str,
    pub state: &'static str,
    pub opened_by: String,
    pub started_at: i64,
    pub execution_id: i64,
    pub window: u32,
    pub port: Option<u16>,
    /// Reverse SSH: the port on the bastion's loopback.
    pub bound_port: Option<u16>,
    /// Reverse SSH: the bastion, `user@host:port`, to jump through.
    pub bastion: Option<String>,
    pub bytes_to_device: u64,
    pub bytes_from_device: u64,
}

/// What the client of a session receives.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    /// A frame from the device, as it came.
    Frame(Bytes),
    /// `{"event":"opened",…}` or `{"event":"ended","reason":…}`.
    Event(serde_json::Value),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Opening,
    Open,
}

struct Live {
    id: String,
    device_id: i64,
    organisation_id: i64,
    device_name: String,
    input_topic: String,
    kind: SessionKind,
    port: Option<u16>,
    window: u32,
    opened_by: String,
    max_secs: u32,
    scope: Scope,
    execution_id: i64,
    started: Instant,
    started_at: i64,
    phase: Phase,
    last_activity: Instant,
    attached: bool,
    client: mpsc::UnboundedSender<ClientMessage>,
    /// Held until the client attaches.
    client_queue: Option<mpsc::UnboundedReceiver<ClientMessage>>,
    /// The channels as the relay sees them.
    relay: Relay,
    bound_port: Option<u16>,
    /// Reverse SSH: the key the request carries, kept here rather than in
    /// the task's stored parameters.
    private_key: Option<String>,
    /// Reverse SSH: the public key line written to the bastion.
    authorized_line: Option<String>,
    bastion: Option<String>,
}

impl Live {
    fn info(&self) -> SessionInfo {
        SessionInfo {
            id: self.id.clone(),
            device_id: self.device_id,
            kind: self.kind.as_str(),
            state: match self.phase {
                Phase::Opening => "opening",
                Phase::Open => "open",
            },
            opened_by: self.opened_by.clone(),
            started_at: self.started_at,
            execution_id: self.execution_id,
            window: self.window,
            port: self.port,
            bound_port: self.bound_port,
            bastion: self.bastion.clone(),
            bytes_to_device: self.relay.bytes_up,
            bytes_from_device: self.relay.bytes_down,
        }
    }
}

#[derive(Debug, Default)]
pub struct RemoteCounters {
    pub opened: std::sync::atomic::AtomicU64,
    pub ended: std::sync::atomic::AtomicU64,
    /// Frames refused: for a session the device does not have, malformed,
    /// or breaking the window.
    pub frames_refused: std::sync::atomic::AtomicU64,
}

pub struct RemoteSessions {
    store: Store,
    transport: Arc<dyn TaskTransport>,
    tasks: Arc<TaskService>,
    settings: RemoteSettings,
    live: Mutex<HashMap<String, Live>>,
    /// Serialises the bastion's `authorized_keys` rewrites.
    bastion_file: Arc<tokio::sync::Mutex<()>>,
    pub counters: RemoteCounters,
}

impl RemoteSessions {
    pub fn new(
        store: Store,
        transport: Arc<dyn TaskTransport>,
        tasks: Arc<TaskService>,
        settings: RemoteSettings,
    ) -> Arc<Self> {
        let this = Arc::new(RemoteSessions {
            store,
            transport,
            tasks: tasks.clone(),
            settings,
            live: Mutex::new(HashMap::new()),
            bastion_file: Arc::default(),
            counters: RemoteCounters::default(),
        });
        tasks.set_remote(Arc::downgrade(&this));
        this
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn settings(&self) -> &RemoteSettings {
        &self.settings
    }

    /// Prometheus text: sessions open by kind, opened, ended, frames refused.
    pub fn prometheus(&self) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        let mut open: HashMap<&'static str, usize> = HashMap::new();
        for l in self.live().values() {
            *open.entry(l.kind.as_str()).or_default() += 1;
        }
        let mut out = String::from(
            "# HELP telemark_remote_sessions_open remote sessions open on this instance\n# TYPE telemark_remote_sessions_open gauge\n",
        );
        for kind in [
            SessionKind::Terminal,
            SessionKind::Tunnel,
            SessionKind::ReverseSsh,
        ] {
            let kind = kind.as_str();
            out.push_str(&format!(
                "telemark_remote_sessions_open{{kind=\"{kind}\"}} {}\n",
                open.get(kind).copied().unwrap_or(0)
            ));
        }
        let c = &self.counters;
        for (name, help, value) in [
            ("sessions_opened", "remote sessions opened", &c.opened),
            ("sessions_ended", "remote sessions ended", &c.ended),
            (
                "frames_refused",
                "session frames refused (unknown session, malformed, past the window)",
                &c.frames_refused,
            ),
        ] {
            out.push_str(&format!(
                "# HELP telemark_remote_{name}_total {help}\n# TYPE telemark_remote_{name}_total counter\ntelemark_remote_{name}_total {}\n",
                value.load(Relaxed)
            ));
        }
        out
    }

    /// Whether `role` may open sessions.
    pub fn may_open(&self, role: Role) -> bool {
        self.settings.roles.contains(&role)
    }

    /// Opens a session on a device in the opener's scope.
    pub async fn open(
        &self,
        opener: &Opener,
        device_id: i64,
        request: &OpenRequest,
    ) -> Result<SessionInfo, RemoteError> {
        if !self.may_open(opener.role) {
            return Err(RemoteError::Forbidden(format!(
                "the {} role may not open remote sessions",
                opener.role.as_str()
            )));
        }
        let device = self.store.device(&opener.scope, device_id).await?;
        if !device.online {
            // A session is for now: it is not queued for the device's return.
            return Err(RemoteError::Conflict(format!(
                "{} is offline; a remote session needs the device connected",
                device.name
            )));
        }
        let model = self
            .store
            .device_models()
            .await?
            .into_iter()
            .find(|m| m.id == device.model_id)
            .ok_or_else(|| RemoteError::NotFound("the device's model is gone".into()))?;
        let default_window = match request.kind {
            SessionKind::Tunnel => session::TUNNEL_WINDOW,
            _ => session::TERMINAL_WINDOW,
        };
        let window = request.window.unwrap_or(default_window);
        if !(session::MIN_WINDOW..=session::MAX_WINDOW).contains(&window) {
            return Err(RemoteError::Field {
                field: "window",
                message: format!(
                    "must be {} to {} bytes",
                    session::MIN_WINDOW,
                    session::MAX_WINDOW
                ),
            });
        }
        let max_secs = match request.ttl_secs {
            None => self.settings.max_secs,
            Some(t) if (10..=self.settings.max_secs).contains(&t) => t,
            Some(_) => {
                return Err(RemoteError::Field {
                    field: "ttl_secs",
                    message: format!("must be 10 to {} seconds", self.settings.max_secs),
                });
            }
        };
        let id = session_id();
        let mut reverse = None;
        let mut private_key = None;
        let mut authorized_line = None;
        let port = match request.kind {
            SessionKind::Terminal => None,
            SessionKind::Tunnel => Some(request.port.ok_or(RemoteError::Field {
                field: "port",
                message: "a tunnel names the device port it reaches".into(),
            })?),
            SessionKind::ReverseSsh => {
                let Some(bastion) = &self.settings.bastion else {
                    return Err(RemoteError::Conflict(
                        "this platform has no bastion for reverse SSH tunnels ([remote.bastion])"
                            .into(),
                    ));
                };
                let target = request.port.unwrap_or(22);
                let (private, public) = session_key(&id)?;
                let known_host = if bastion.port == 22 {
                    format!("{} {}", bastion.host, bastion.host_key.trim())
                } else {
                    format!(
                        "[{}]:{} {}",
                        bastion.host,
                        bastion.port,
                        bastion.host_key.trim()
                    )
                };
                reverse = Some(ReverseSsh {
                    host: bastion.host.clone(),
                    port: bastion.port,
                    user: bastion.user.clone(),
                    // Filled in when the request is sent, never stored.
                    private_key: String::new(),
                    known_host,
                    target_port: target,
                });
                private_key = Some(private);
                let expiry = time_stamp(store::now_millis() / 1000 + i64::from(max_secs) + 60);
                authorized_line = Some(format!(
                    "restrict,port-forwarding,permitlisten=\"localhost:*\",expiry-time=\"{expiry}\" {public}"
                ));
                Some(target)
            }
        };
        let params = RemoteSession {
            session: id.clone(),
            kind: request.kind,
            cols: request.cols,
            rows: request.rows,
            port,
            window,
            idle_secs: self.settings.idle_secs,
            max_secs,
            reverse_ssh: reverse,
        };
        params.check().map_err(|m| RemoteError::Field {
            field: "params",
            message: m,
        })?;
        let (client, client_queue) = mpsc::unbounded_channel();
        {
            let live = self.live();
            let on_device = live.values().filter(|l| l.device_id == device_id).count();
            if on_device >= self.settings.per_device {
                return Err(RemoteError::Conflict(format!(
                    "the device already has {on_device} remote sessions open"
                )));
            }
            if live.len() >= self.settings.total {
                return Err(RemoteError::Conflict(format!(
                    "this platform instance has its maximum of {} remote sessions open",
                    self.settings.total
                )));
            }
        }
        let live = Live {
            id: id.clone(),
            device_id,
            organisation_id: device.organisation_id,
            device_name: device.name.clone(),
            input_topic: session::input_topic(&model.topic_segment, &device.mac, &id),
            kind: request.kind,
            port,
            window,
            opened_by: opener.username.clone(),
            max_secs,
            scope: opener.scope.clone(),
            execution_id: 0,
            started: Instant::now(),
            started_at: store::now_millis(),
            phase: Phase::Opening,
            last_activity: Instant::now(),
            attached: false,
            client,
            client_queue: Some(client_queue),
            relay: Relay::new(request.kind, port, window),
            bound_port: None,
            private_key,
            authorized_line: authorized_line.clone(),
            bastion: (request.kind == SessionKind::ReverseSsh)
                .then_some(self.settings.bastion.as_ref())
                .flatten()
                .map(|b| format!("{}@{}:{}", b.user, b.host, b.port)),
        };
        // In the table before the job exists, so its dispatch finds it.
        self.live().insert(id.clone(), live);
        let created = async {
            if let Some(line) = &authorized_line {
                self.bastion_keys(Some(line), None).await?;
            }
            let job = crate::tasks::create_platform_job(
                &self.store,
                &opener.scope,
                crate::tasks::PlatformJob {
                    description: format!("{} session", params.kind.as_str()),
                    params: device_protocol::task::TaskParams::RemoteSession(params.clone()),
                    device_ids: vec![device_id],
                    timeout_secs: OPEN_TIMEOUT_SECS,
                    expires_in_secs: OPEN_EXPIRY_SECS,
                    // An offline device fails fast; the user opens again.
                    max_retries: 0,
                    actor: &opener.username,
                },
            )
            .await?;
            Ok::<_, RemoteError>(job)
        }
        .await;
        let job = match created {
            Ok(job) => job,
            Err(e) => {
                self.live().remove(&id);
                if let Some(line) = &authorized_line {
                    let _ = self.bastion_keys(None, Some(line)).await;
                }
                return Err(e);
            }
        };
        let execution_id = self
            .store
            .task_executions(
                &opener.scope,
                &store::ExecutionQuery {
                    job_id: Some(job.id),
                    limit: 1,
                    ..Default::default()
                },
            )
            .await?
            .pop()
            .map(|e| e.id)
            .unwrap_or(0);
        let info = {
            let mut live = self.live();
            match live.get_mut(&id) {
                Some(l) => {
                    l.execution_id = execution_id;
                    l.info()
                }
                None => {
                    return Err(RemoteError::Conflict(
                        "the session ended as it opened".into(),
                    ));
                }
            }
        };
        self.counters
            .opened
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.store
            .record_audit(&NewAuditEntry {
                organisation_id: device.organisation_id,
                actor: opener.username.clone(),
                action: "remote.open".into(),
                target: format!("device {} ({})", device.name, device.id),
                before_value: None,
                after_value: Some(format!(
                    "{} session {id}{}",
                    request.kind.as_str(),
                    port.map(|p| format!(" to port {p}")).unwrap_or_default()
                )),
                address: opener.address.clone(),
            })
            .await?;
        self.tasks.wake();
        Ok(info)
    }

    /// The request parameters to send for an execution: the reverse SSH
    /// key goes in here, from memory. None when the session is gone.
    pub(crate) fn request_params(
        &self,
        session: &str,
        execution_id: i64,
        mut params: serde_json::Value,
    ) -> Option<serde_json::Value> {
        let mut live = self.live();
        let l = live.get_mut(session)?;
        // Known before any answer can arrive.
        l.execution_id = execution_id;
        if let Some(key) = &l.private_key {
            params["reverse_ssh"]["private_key"] = key.clone().into();
        }
        Some(params)
    }

    /// The sessions on a device the caller may see.
    pub fn sessions_of(&self, device_id: i64) -> Vec<SessionInfo> {
        let mut list: Vec<SessionInfo> = self
            .live()
            .values()
            .filter(|l| l.device_id == device_id)
            .map(Live::info)
            .collect();
        list.sort_by_key(|s| s.started_at);
        list
    }

    /// One session, for its opener (or an operator admin).
    pub fn session(
        &self,
        id: &str,
        username: &str,
        role: Role,
    ) -> Result<SessionInfo, RemoteError> {
        let live = self.live();
        match live.get(id) {
            Some(l) if l.opened_by == username || role == Role::OperatorAdmin => Ok(l.info()),
            _ => Err(RemoteError::NotFound("no such remote session".into())),
        }
    }

    /// The client's end of a session: only its opener attaches, once.
    pub fn attach(
        &self,
        id: &str,
        username: &str,
    ) -> Result<(SessionInfo, mpsc::UnboundedReceiver<ClientMessage>), RemoteError> {
        let mut live = self.live();
        let l = live
            .get_mut(id)
            .filter(|l| l.opened_by == username)
            .ok_or_else(|| RemoteError::NotFound("no such remote session".into()))?;
        let queue = l
            .client_queue
            .take()
            .ok_or_else(|| RemoteError::Conflict("the session already has its client".into()))?;
        l.attached = true;
        l.last_activity = Instant::now();
        Ok((l.info(), queue))
    }

    /// A frame from the session's client.
    pub fn from_client(&self, id: &str, payload: &[u8]) -> Result<(), String> {
        let frame = Frame::decode(payload).map_err(|e| e.to_string());
        let checked = {
            let mut live = self.live();
            let Some(l) = live.get_mut(id) else {
                return Err("the session has ended".into());
            };
            l.last_activity = Instant::now();
            frame.and_then(|f| {
                let open = l.phase == Phase::Open;
                l.relay
                    .client_frame(&f, open)
                    .map(|()| (f, l.input_topic.clone()))
            })
        };
        match checked {
            Ok((Frame::End { reason }, _)) => {
                let reason = if reason.is_empty() {
                    "ended by the client".to_owned()
                } else {
                    format!("ended by the client: {reason}")
                };
                self.finish(id, reason, true);
                Ok(())
            }
            Ok((_, topic)) => {
                self.transport
                    .send_session(topic, Bytes::copy_from_slice(payload));
                Ok(())
            }
            Err(why) => {
                self.count_refused();
                let reason = format!("the client broke the session protocol: {why}");
                self.finish(id, reason.clone(), true);
                Err(reason)
            }
        }
    }

    /// A frame from a device on `sessions/{id}/out`.
    pub fn from_device(&self, device_id: i64, id: &str, payload: Bytes, reply_topic: String) {
        let frame = Frame::decode(&payload).map_err(|e| e.to_string());
        let is_end = matches!(frame, Ok(Frame::End { .. }));
        let outcome = {
            let mut live = self.live();
            match live.get_mut(id) {
                // A session this device never had (or one already over):
                // the device is told to stop, nobody else is disturbed.
                Some(l) if l.device_id != device_id => Err(None),
                None => Err(None),
                Some(l) => {
                    l.last_activity = Instant::now();
                    if l.phase == Phase::Opening {
                        // The device speaks once its end is open; its task
                        // answer may still be on its way to the database.
                        l.phase = Phase::Open;
                        let _ = l.client.send(ClientMessage::Event(serde_json::json!({
                            "event": "opened",
                            "session": l.info(),
                        })));
                    }
                    match frame.and_then(|f| l.relay.device_frame(&f).map(|()| f)) {
                        Ok(Frame::End { reason }) => Ok(Some(reason)),
                        Ok(_) => {
                            let _ = l.client.send(ClientMessage::Frame(payload.clone()));
                            Ok(None)
                        }
                        Err(why) => Err(Some(why)),
                    }
                }
            }
        };
        match outcome {
            Ok(None) => {}
            Ok(Some(reason)) => {
                let reason = if reason.is_empty() {
                    "ended by the device".to_owned()
                } else {
                    reason
                };
                self.finish(id, reason, false);
            }
            Err(None) => {
                self.count_refused();
                if !is_end {
                    // Topic of the device that sent it: its own prefix.
                    let end = Frame::End {
                        reason: "the platform has no such session".into(),
                    };
                    self.transport
                        .send_session(reply_topic, Bytes::from(end.encode()));
                }
            }
            Err(Some(why)) => {
                self.count_refused();
                self.finish(
                    id,
                    format!("the device broke the session protocol: {why}"),
                    true,
                );
            }
        }
    }

    fn count_refused(&self) {
        self.counters
            .frames_refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The device went offline: its sessions end.
    pub fn device_offline(&self, device_id: i64) {
        let ids: Vec<String> = self
            .live()
            .values()
            .filter(|l| l.device_id == device_id)
            .map(|l| l.id.clone())
            .collect();
        for id in ids {
            self.finish(&id, "the device disconnected".into(), false);
        }
    }

    /// The client went away (its WebSocket closed).
    pub fn client_gone(&self, id: &str) {
        self.finish(id, "the client disconnected".into(), true);
    }

    /// Ends a session by a user's request.
    pub fn close(&self, id: &str, username: &str, role: Role) -> Result<(), RemoteError> {
        self.session(id, username, role)?;
        self.finish(id, format!("closed by {username}"), true);
        Ok(())
    }

    /// Ends a session once: tells the client and (unless it said so
    /// itself) the device, and writes the system log entry.
    fn finish(&self, id: &str, reason: String, tell_device: bool) {
        let Some(l) = self.live().remove(id) else {
            return;
        };
        self.counters
            .ended
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if tell_device {
            let end = Frame::End {
                reason: reason.clone(),
            };
            self.transport
                .send_session(l.input_topic.clone(), Bytes::from(end.encode()));
        }
        let _ = l.client.send(ClientMessage::Event(serde_json::json!({
            "event": "ended",
            "reason": reason,
        })));
        let (store, tasks) = (self.store.clone(), self.tasks.clone());
        let bastion = self.settings.bastion.clone();
        let line = l.authorized_line.clone();
        let lock = self.bastion_file.clone();
        tokio::spawn(async move {
            if let (Some(b), Some(line)) = (bastion, line) {
                let _guard = lock.lock().await;
                if let Err(e) = edit_authorized_keys(&b.authorized_keys, None, Some(&line)) {
                    tracing::warn!(error = %e, "the bastion's key of an ended session was not removed");
                }
            }
            if l.phase == Phase::Opening {
                // Nobody waits for the device's answer any more.
                let _ = crate::tasks::cancel_execution(
                    &store,
                    &l.scope,
                    "remote access",
                    l.execution_id,
                )
                .await;
                tasks.wake();
            }
            let seconds = l.started.elapsed().as_secs();
            let entry = NewAuditEntry {
                organisation_id: l.organisation_id,
                actor: l.opened_by.clone(),
                action: "remote.close".into(),
                target: format!("device {} ({})", l.device_name, l.device_id),
                before_value: Some(format!("{} session {}", l.kind.as_str(), l.id)),
                after_value: Some(format!(
                    "ended after {seconds} s ({} bytes to the device, {} from it): {}",
                    l.relay.bytes_up, l.relay.bytes_down, reason
                )),
                address: None,
            };
            if let Err(e) = store.record_audit(&entry).await {
                tracing::warn!(error = %e, "the end of a remote session was not logged");
            }
        });
    }

    async fn bastion_keys(
        &self,
        add: Option<&str>,
        remove: Option<&str>,
    ) -> Result<(), RemoteError> {
        let Some(b) = &self.settings.bastion else {
            return Ok(());
        };
        let _guard = self.bastion_file.lock().await;
        edit_authorized_keys(&b.authorized_keys, add, remove)
            .map_err(|e| RemoteError::Bastion(format!("{}: {e}", b.authorized_keys.display())))
    }

    /// The outcome of a session's opening task.
    pub(crate) async fn task_final(&self, execution_id: i64, state: &str) {
        let found = {
            let live = self.live();
            live.values()
                .find(|l| l.execution_id == execution_id)
                .map(|l| (l.id.clone(), l.scope.clone()))
        };
        let Some((id, scope)) = found else { return };
        let execution = match self.store.task_execution(&scope, execution_id).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "a remote session's opening was not read");
                return;
            }
        };
        if state == "succeeded" {
            let opened: Option<SessionOpened> = execution
                .result
                .as_deref()
                .and_then(|r| serde_json::from_str(r).ok());
            let mut live = self.live();
            if let Some(l) = live.get_mut(&id) {
                let was_open = l.phase == Phase::Open;
                l.phase = Phase::Open;
                l.bound_port = opened.and_then(|o| o.bound_port);
                // The key has reached the device; the platform forgets it.
                l.private_key = None;
                l.last_activity = Instant::now();
                if !was_open {
                    let _ = l.client.send(ClientMessage::Event(serde_json::json!({
                        "event": "opened",
                        "session": l.info(),
                    })));
                }
            }
        } else {
            let why = execution
                .error
                .unwrap_or_else(|| format!("the device's answer: {state}"));
            self.finish(
                &id,
                format!("the device did not open the session: {why}"),
                false,
            );
        }
    }

    /// Ends sessions idle, too long, or never attached. Every second.
    pub async fn run_sweeper(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => break,
            }
            let idle = Duration::from_secs(self.settings.idle_secs.into());
            let due: Vec<(String, String)> = self
                .live()
                .values()
                .filter_map(|l| {
                    // A reverse tunnel's traffic goes through the bastion,
                    // not through us, and it has no client: its TTL rules.
                    let relayed = l.kind != SessionKind::ReverseSsh;
                    let why = if l.started.elapsed() >= Duration::from_secs(l.max_secs.into()) {
                        format!("the session reached its maximum of {} s", l.max_secs)
                    } else if relayed && l.last_activity.elapsed() >= idle {
                        format!("idle for {} s", self.settings.idle_secs)
                    } else if relayed && !l.attached && l.started.elapsed() >= ATTACH_WITHIN {
                        "no client attached within a minute".into()
                    } else {
                        return None;
                    };
                    Some((l.id.clone(), why))
                })
                .collect();
            for (id, why) in due {
                self.finish(&id, why, true);
            }
        }
        let ids: Vec<String> = self.live().keys().cloned().collect();
        for id in ids {
            self.finish(&id, "the platform is shutting down".into(), true);
        }
    }
}

/// One channel as the relay sees it: both directions' windows, and which
/// side has finished sending (a close without a reason, like a FIN).
struct RelayChannel {
    /// Client → device.
    up: ReceiveWindow,
    /// Device → client.
    down: ReceiveWindow,
    client_done: bool,
    device_done: bool,
}

impl RelayChannel {
    fn new(window: u32) -> Self {
        RelayChannel {
            up: ReceiveWindow::new(window),
            down: ReceiveWindow::new(window),
            client_done: false,
            device_done: false,
        }
    }
}

/// How many closed channel ids a session remembers.
const CLOSED_KEPT: usize = 64;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Device,
}

/// What the relay knows of one session's channels, checked frame by frame
/// as they pass (plain data: no socket, no broker).
struct Relay {
    kind: SessionKind,
    port: Option<u16>,
    window: u32,
    channels: HashMap<u32, RelayChannel>,
    /// Channels closed lately: a frame still on its way for one is let
    /// through (the far end drops it), not taken for a breach.
    closed: std::collections::VecDeque<u32>,
    bytes_up: u64,
    bytes_down: u64,
}

impl Relay {
    fn new(kind: SessionKind, port: Option<u16>, window: u32) -> Self {
        let mut channels = HashMap::new();
        // A terminal's one channel is there from the start.
        if kind == SessionKind::Terminal {
            channels.insert(0, RelayChannel::new(window));
        }
        Relay {
            kind,
            port,
            window,
            channels,
            closed: std::collections::VecDeque::new(),
            bytes_up: 0,
            bytes_down: 0,
        }
    }

    /// A client's frame, against what the session allows and its windows.
    /// Until the device has opened its end, only acknowledgements and an
    /// end pass.
    fn client_frame(&mut self, f: &Frame, open: bool) -> Result<(), String> {
        if !open && !matches!(f, Frame::End { .. } | Frame::Ack { .. }) {
            return Err("the session is not open yet".into());
        }
        match f {
            Frame::Data { .. } | Frame::Ack { .. } | Frame::Close { .. } => {
                self.channel_frame(Side::Client, f)?;
            }
            Frame::Open { channel, port } => {
                if self.kind != SessionKind::Tunnel {
                    return Err("only a tunnel opens channels".into());
                }
                if Some(*port) != self.port {
                    return Err(format!(
                        "this session reaches port {} only",
                        self.port.unwrap_or(0)
                    ));
                }
                if *channel == 0
                    || self.channels.contains_key(channel)
                    || self.closed.contains(channel)
                {
                    return Err(format!("channel {channel} cannot be opened"));
                }
                if self.channels.len() >= session::MAX_CHANNELS as usize {
                    return Err(format!(
                        "at most {} connections per session",
                        session::MAX_CHANNELS
                    ));
                }
                self.channels
                    .insert(*channel, RelayChannel::new(self.window));
            }
            Frame::Resize { .. } if self.kind == SessionKind::Terminal => {}
            Frame::Resize { .. } => return Err("only a terminal resizes".into()),
            Frame::End { .. } => {}
        }
        Ok(())
    }

    /// A device's frame.
    fn device_frame(&mut self, f: &Frame) -> Result<(), String> {
        match f {
            Frame::Data { .. } | Frame::Ack { .. } | Frame::Close { .. } => {
                self.channel_frame(Side::Device, f)
            }
            Frame::End { .. } => Ok(()),
            Frame::Open { .. } | Frame::Resize { .. } => {
                Err("a device neither opens channels nor resizes".into())
            }
        }
    }

    /// A data, ack or close frame from `side`, against the channel's
    /// windows and state.
    fn channel_frame(&mut self, side: Side, f: &Frame) -> Result<(), String> {
        let (channel, closing) = match f {
            Frame::Data { channel, .. } | Frame::Ack { channel, .. } => (*channel, None),
            Frame::Close { channel, reason } => (*channel, Some(reason.is_empty())),
            _ => return Ok(()),
        };
        let Some(c) = self.channels.get_mut(&channel) else {
            if self.closed.contains(&channel) || !matches!(f, Frame::Data { .. }) {
                return Ok(());
            }
            return Err(format!("data on channel {channel}, which is not open"));
        };
        let (sending, acking, done) = match side {
            Side::Client => (&mut c.up, &mut c.down, &mut c.client_done),
            Side::Device => (&mut c.down, &mut c.up, &mut c.device_done),
        };
        match f {
            Frame::Data { offset, bytes, .. } => {
                if *done {
                    return Err(format!("data on channel {channel} after its end"));
                }
                sending
                    .data(*offset, bytes.len())
                    .map_err(|e| e.to_string())?;
                match side {
                    Side::Client => self.bytes_up += bytes.len() as u64,
                    Side::Device => self.bytes_down += bytes.len() as u64,
                }
            }
            Frame::Ack { consumed, .. } => {
                acking.acknowledged(*consumed).map_err(|e| e.to_string())?
            }
            _ => {
                *done = true;
                // A reason aborts both directions; otherwise the channel
                // goes once both sides have finished.
                if closing == Some(false) || (c.client_done && c.device_done) {
                    self.channels.remove(&channel);
                    if self.closed.len() >= CLOSED_KEPT {
                        self.closed.pop_front();
                    }
                    self.closed.push_back(channel);
                }
            }
        }
        Ok(())
    }
}

/// 128 random bits as 32 hex digits.
fn session_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh ed25519 key for one session: (OpenSSH private key, public key line).
fn session_key(id: &str) -> Result<(String, String), RemoteError> {
    let seed: [u8; 32] = rand::random();
    let pair = ssh_key::private::Ed25519Keypair::from_seed(&seed);
    let private = ssh_key::PrivateKey::new(pair.into(), format!("telemark-session-{id}"))
        .map_err(|e| RemoteError::Bastion(format!("key: {e}")))?;
    let text = private
        .to_openssh(ssh_key::LineEnding::LF)
        .map_err(|e| RemoteError::Bastion(format!("key: {e}")))?;
    let public = private
        .public_key()
        .to_openssh()
        .map_err(|e| RemoteError::Bastion(format!("key: {e}")))?;
    Ok((text.to_string(), public))
}

/// `YYYYMMDDHHMMSS` in UTC, as `expiry-time` wants it.
fn time_stamp(unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}{:02}{:02}{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Adds and removes lines of the bastion's `authorized_keys`, written to a
/// new file and renamed over the old, so sshd never reads half a file.
fn edit_authorized_keys(
    path: &std::path::Path,
    add: Option<&str>,
    remove: Option<&str>,
) -> std::io::Result<()> {
    let current = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let now = time_stamp(store::now_millis() / 1000);
    let mut lines: Vec<&str> = current
        .lines()
        .filter(|l| Some(*l) != remove)
        // Lines of sessions whose expiry passed (an instance that died
        // before removing them) go too.
        .filter(|l| {
            l.split("expiry-time=\"")
                .nth(1)
                .and_then(|rest| rest.get(..14))
                .is_none_or(|at| at > now.as_str())
        })
        .collect();
    if let Some(line) = add {
        lines.push(line);
    }
    let mut text = lines.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    let tmp = path.with_extension("telemark-new");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(channel: u32, offset: u64, n: usize) -> Frame {
        Frame::Data {
            channel,
            offset,
            bytes: vec![b'x'; n],
        }
    }

    fn close(channel: u32, reason: &str) -> Frame {
        Frame::Close {
            channel,
            reason: reason.into(),
        }
    }

    #[test]
    fn a_half_closed_channel_still_carries_the_other_direction() {
        let mut relay = Relay::new(SessionKind::Tunnel, Some(22), 1024);
        relay
            .client_frame(
                &Frame::Open {
                    channel: 1,
                    port: 22,
                },
                true,
            )
            .expect("open");
        // The client is done sending; the device's banner still passes.
        relay.client_frame(&close(1, ""), true).expect("fin");
        relay
            .device_frame(&data(1, 0, 20))
            .expect("the other direction");
        assert!(
            relay.client_frame(&data(1, 0, 1), true).is_err(),
            "data after the client's end"
        );
        relay.device_frame(&close(1, "")).expect("fin");
        // Gone once both are done; a late frame for it is not a breach.
        assert!(relay.channels.is_empty());
        relay
            .device_frame(&data(1, 20, 5))
            .expect("late data of a closed channel passes");
        assert!(
            relay
                .client_frame(
                    &Frame::Open {
                        channel: 1,
                        port: 22
                    },
                    true
                )
                .is_err(),
            "a closed channel id is not reused"
        );
    }

    #[test]
    fn the_relay_holds_each_side_to_the_window() {
        let mut relay = Relay::new(SessionKind::Terminal, None, 1024);
        relay.device_frame(&data(0, 0, 1024)).expect("one window");
        assert!(
            relay.device_frame(&data(0, 1024, 1)).is_err(),
            "past the window"
        );
        let mut relay = Relay::new(SessionKind::Terminal, None, 1024);
        relay.device_frame(&data(0, 0, 1024)).expect("one window");
        relay
            .client_frame(
                &Frame::Ack {
                    channel: 0,
                    consumed: 1024,
                },
                true,
            )
            .expect("the client drew it");
        relay
            .device_frame(&data(0, 1024, 1024))
            .expect("a second window after the credit");
        assert!(relay.device_frame(&data(0, 4096, 1)).is_err(), "a gap");
        assert_eq!(relay.bytes_down, 2048);
    }

    #[test]
    fn the_relay_refuses_what_the_session_does_not_allow() {
        let mut terminal = Relay::new(SessionKind::Terminal, None, 1024);
        assert!(
            terminal.client_frame(&data(0, 0, 1), false).is_err(),
            "before the device opened"
        );
        assert!(
            terminal
                .client_frame(
                    &Frame::Ack {
                        channel: 0,
                        consumed: 0
                    },
                    false
                )
                .is_ok()
        );
        assert!(
            terminal
                .client_frame(
                    &Frame::Open {
                        channel: 1,
                        port: 22
                    },
                    true
                )
                .is_err()
        );
        assert!(
            terminal
                .device_frame(&Frame::Resize { cols: 80, rows: 24 })
                .is_err()
        );
        assert!(
            terminal.client_frame(&data(7, 0, 1), true).is_err(),
            "an unopened channel"
        );
        let mut tunnel = Relay::new(SessionKind::Tunnel, Some(22), 1024);
        assert!(
            tunnel
                .client_frame(
                    &Frame::Open {
                        channel: 1,
                        port: 23
                    },
                    true
                )
                .is_err()
        );
        assert!(
            tunnel
                .client_frame(&Frame::Resize { cols: 80, rows: 24 }, true)
                .is_err()
        );
        for channel in 1..=session::MAX_CHANNELS {
            tunnel
                .client_frame(&Frame::Open { channel, port: 22 }, true)
                .expect("within the limit");
        }
        assert!(
            tunnel
                .client_frame(
                    &Frame::Open {
                        channel: 99,
                        port: 22
                    },
                    true
                )
                .is_err(),
            "past the channel limit"
        );
        // An abort ends both directions at once.
        tunnel
            .device_frame(&close(3, "connection refused"))
            .expect("abort");
        assert!(!tunnel.channels.contains_key(&3));
    }

    #[test]
    fn expiry_times_are_utc_civil_dates() {
        assert_eq!(time_stamp(0), "19700101000000");
        assert_eq!(time_stamp(1_796_342_400), "20261204000000");
        assert_eq!(time_stamp(951_782_400 + 3661), "20000229010101");
    }

    #[test]
    fn session_keys_are_openssh_ed25519() {
        let (private, public) = session_key("abc").expect("a key");
        assert!(private.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
        assert!(public.starts_with("ssh-ed25519 AAAA"));
        assert!(public.ends_with("telemark-session-abc"));
    }

    #[test]
    fn authorized_keys_gain_lose_and_expire_lines() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("authorized_keys");
        let live = "restrict,expiry-time=\"29991231000000\" ssh-ed25519 AAAA live";
        let stale = "restrict,expiry-time=\"20000101000000\" ssh-ed25519 AAAA stale";
        std::fs::write(&path, format!("{stale}\n")).expect("write");
        edit_authorized_keys(&path, Some(live), None).expect("add");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            format!("{live}\n")
        );
        edit_authorized_keys(&path, None, Some(live)).expect("remove");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "");
    }
}
