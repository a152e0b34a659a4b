//! The alarm engine. Threshold rules are evaluated as readings arrive
//! (a condition must hold for the rule's duration, in device time); offline
//! and firmware rules by a periodic pass that one instance runs at a time
//! (a lease in the database). Every raise, acknowledgement and clear goes
//! to the webhooks of the device's organisation and those above it, signed
//! with HMAC-SHA256 and retried with backoff, each delivery audited.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use store::{Alarm, AlarmRule, DeviceContext, Store, StoreError};
use tokio::sync::mpsc;

/// How often the periodic pass runs, and how long its lease lasts.
const PERIODIC_EVERY: Duration = Duration::from_secs(10);
const LEASE_MS: i64 = 30_000;
/// Delivery attempts of one webhook call, with waits of 1, 2, 4, 8 s.
const WEBHOOK_ATTEMPTS: u32 = 5;

/// Something that happened to an alarm.
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmEvent {
    /// `raised`, `acknowledged` or `cleared`.
    pub kind: &'static str,
    pub alarm: Alarm,
    pub rule_name: String,
    /// The device's organisation path: which webhooks hear of it.
    pub organisation_path: String,
}

pub struct AlarmEngine {
    store: Store,
    rules: RwLock<Arc<Vec<AlarmRule>>>,
    /// Metrics some threshold rule watches: the rest pass at no cost.
    watched: RwLock<HashSet<String>>,
    contexts: Mutex<HashMap<i64, DeviceContext>>,
    /// (rule, device) → device time the condition started to hold.
    breaches: Mutex<HashMap<(i64, i64), i64>>,
    /// Threshold alarms open now, so readings touch the database only on a
    /// change.
    open: Mutex<HashSet<(i64, i64)>>,
    events: mpsc::UnboundedSender<AlarmEvent>,
}

enum Transition {
    Raise(AlarmRule, f64),
    Clear(AlarmRule),
}

fn applies(rule: &AlarmRule, device: &DeviceContext) -> bool {
    device
        .organisation_path
        .starts_with(&rule.organisation_path)
        && rule.model_id.is_none_or(|m| m == device.model_id)
}

fn breaches(rule: &AlarmRule, value: f64) -> bool {
    match (rule.comparison.as_deref(), rule.threshold) {
        (Some(">"), Some(t)) => value > t,
        (Some("<"), Some(t)) => value < t,
        _ => false,
    }
}

impl AlarmEngine {
    /// The engine and the receiver of its events (for [`run_webhooks`]).
    pub async fn new(
        store: Store,
    ) -> Result<(Arc<Self>, mpsc::UnboundedReceiver<AlarmEvent>), StoreError> {
        let (events, receiver) = mpsc::unbounded_channel();
        let engine = Arc::new(AlarmEngine {
            store,
            rules: RwLock::default(),
            watched: RwLock::default(),
            contexts: Mutex::default(),
            breaches: Mutex::default(),
            open: Mutex::default(),
            events,
        });
        engine.refresh_rules().await?;
        Ok((engine, receiver))
    }

    /// Reads the rules again (after one was created or switched).
    pub async fn refresh_rules(&self) -> Result<(), StoreError> {
        let rules = self.store.enabled_alarm_rules().await?;
        let watched = rules
            .iter()
            .filter(|r| r.kind == "threshold")
            .filter_map(|r| r.metric.clone())
            .collect();
        let mut open = HashSet::new();
        for rule in rules.iter().filter(|r| r.kind == "threshold") {
            for device in self.store.open_alarm_devices(rule.id).await? {
                open.insert((rule.id, device));
            }
        }
        *self.open.lock().unwrap_or_else(|p| p.into_inner()) = open;
        *self.watched.write().unwrap_or_else(|p| p.into_inner()) = watched;
        *self.rules.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(rules);
        // Organisations or models of devices may have changed too.
        self.contexts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        Ok(())
    }

    fn rules(&self) -> Arc<Vec<AlarmRule>> {
        self.rules.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Tells the webhooks (an acknowledgement made through the API).
    pub fn notify(&self, event: AlarmEvent) {
        // The receiver lives as long as the platform.
        let _ = self.events.send(event);
    }

    async fn context(&self, device_id: i64) -> Option<DeviceContext> {
        if let Some(c) = self
            .contexts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&device_id)
        {
            return Some(c.clone());
        }
        let context = self.store.device_context(device_id).await.ok()??;
        self.contexts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(device_id, context.clone());
        Some(context)
    }

    /// Takes the readings of one message of a device (device time `ts`).
    pub async fn observe(&self, device_id: i64, ts: i64, metrics: &[(String, f64)]) {
        let interesting = {
            let watched = self.watched.read().unwrap_or_else(|p| p.into_inner());
            metrics.iter().any(|(m, _)| watched.contains(m))
        };
        if !interesting {
            return;
        }
        let Some(device) = self.context(device_id).await else {
            return;
        };
        let rules = self.rules();
        let mut transitions = Vec::new();
        {
            let mut since = self.breaches.lock().unwrap_or_else(|p| p.into_inner());
            let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            for rule in rules
                .iter()
                .filter(|r| r.kind == "threshold" && applies(r, &device))
            {
                let Some((_, value)) = metrics
                    .iter()
                    .find(|(m, _)| Some(m) == rule.metric.as_ref())
                else {
                    continue;
                };
                let key = (rule.id, device_id);
                if breaches(rule, *value) {
                    let start = *since.entry(key).or_insert(ts);
                    if ts - start >= rule.duration_secs * 1000 && !open.contains(&key) {
                        transitions.push(Transition::Raise(rule.clone(), *value));
                    }
                } else {
                    since.remove(&key);
                    if open.contains(&key) {
                        transitions.push(Transition::Clear(rule.clone()));
                    }
                }
            }
        }
        for t in transitions {
            self.apply(t, &device).await;
        }
    }

    async fn apply(&self, transition: Transition, device: &DeviceContext) {
        let result = match &transition {
            Transition::Raise(rule, value) => {
                let message = match (&rule.metric, &rule.comparison, rule.threshold) {
                    (Some(metric), Some(cmp), Some(threshold)) => format!(
                        "{}: {metric} {value:.1} {cmp} {threshold} for {} s",
                        rule.name, rule.duration_secs
                    ),
                    _ => rule.name.clone(),
                };
                self.store
                    .raise_alarm(rule, device, &message, Some(*value))
                    .await
                    .map(|a| a.map(|a| ("raised", a, rule)))
            }
            Transition::Clear(rule) => self
                .store
                .clear_alarm(rule.id, device.device_id)
                .await
                .map(|a| a.map(|a| ("cleared", a, rule))),
        };
        if result.is_ok() {
            let (key, raised) = match &transition {
                Transition::Raise(rule, _) => ((rule.id, device.device_id), true),
                Transition::Clear(rule) => ((rule.id, device.device_id), false),
            };
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            if raised {
                open.insert(key);
            } else {
                open.remove(&key);
            }
        }
        match result {
            Ok(Some((kind, alarm, rule))) => {
                tracing::info!(device = device.device_id, rule = %rule.name, kind, "alarm");
                self.notify(AlarmEvent {
                    kind,
                    alarm,
                    rule_name: rule.name.clone(),
                    organisation_path: device.organisation_path.clone(),
                });
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "alarm not recorded"),
        }
    }

    /// One pass over the offline and firmware rules, at `now` (Unix ms).
    pub async fn evaluate_presence_and_firmware(&self, now: i64) -> Result<(), StoreError> {
        for rule in self
            .rules()
            .iter()
            .filter(|r| r.kind == "offline" || r.kind == "firmware")
        {
            let open: HashSet<i64> = self
                .store
                .open_alarm_devices(rule.id)
                .await?
                .into_iter()
                .collect();
            for device in self.store.devices_for_rule(rule).await? {
                let bad = match rule.kind.as_str() {
                    "offline" => {
                        !device.online
                            && device
                                .last_seen_at
                                .is_some_and(|seen| now - seen >= rule.duration_secs * 1000)
                    }
                    _ => match (&device.firmware_version, &rule.expected_firmware) {
                        (Some(actual), Some(expected)) => actual != expected,
                        _ => false,
                    },
                };
                let transition = match (bad, open.contains(&device.device_id)) {
                    (true, false) => Transition::Raise(rule.clone(), 0.0),
                    (false, true) => Transition::Clear(rule.clone()),
                    _ => continue,
                };
                let transition = match (transition, rule.kind.as_str()) {
                    (Transition::Raise(rule, _), "firmware") => {
                        let message = format!(
                            "{}: firmware {} is not {}",
                            rule.name,
                            device.firmware_version.as_deref().unwrap_or("?"),
                            rule.expected_firmware.as_deref().unwrap_or("?")
                        );
                        self.raise_with(&rule, &device, &message).await;
                        continue;
                    }
                    (Transition::Raise(rule, _), _) => {
                        let message = format!(
                            "{}: offline for more than {} s",
                            rule.name, rule.duration_secs
                        );
                        self.raise_with(&rule, &device, &message).await;
                        continue;
                    }
                    (t, _) => t,
                };
                self.apply(transition, &device).await;
            }
        }
        Ok(())
    }

    async fn raise_with(&self, rule: &AlarmRule, device: &DeviceContext, message: &str) {
        match self.store.raise_alarm(rule, device, message, None).await {
            Ok(Some(alarm)) => self.notify(AlarmEvent {
                kind: "raised",
                alarm,
                rule_name: rule.name.clone(),
                organisation_path: device.organisation_path.clone(),
            }),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "alarm not recorded"),
        }
    }
}

/// Runs the periodic pass while this instance holds the lease; reads the
/// rules again on every round so rules made elsewhere are seen.
pub async fn run_periodic(
    engine: Arc<AlarmEngine>,
    holder: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(PERIODIC_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if let Err(e) = engine.refresh_rules().await {
            tracing::warn!(error = %e, "alarm rules not read");
            continue;
        }
        match engine
            .store
            .take_lease("alarm-periodic", &holder, LEASE_MS)
            .await
        {
            Ok(true) => {
                if let Err(e) = engine
                    .evaluate_presence_and_firmware(store::now_millis())
                    .await
                {
                    tracing::warn!(error = %e, "offline and firmware alarms not evaluated");
                }
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "alarm lease not taken"),
        }
    }
}

/// The JSON body of a webhook call.
pub fn webhook_body(event: &AlarmEvent) -> String {
    let a = &event.alarm;
    serde_json::json!({
        "event": format!("alarm.{}", event.kind),
        "alarm": {
            "id": a.id,
            "rule_id": a.rule_id,
            "rule": event.rule_name,
            "device_id": a.device_id,
            "organisation_id": a.organisation_id,
            "state": a.state,
            "severity": a.severity,
            "message": a.message,
            "value": a.value,
            "raised_at": a.raised_at,
            "acknowledged_at": a.acknowledged_at,
            "acknowledged_by": a.acknowledged_by,
            "cleared_at": a.cleared_at,
        }
    })
    .to_string()
}

/// `sha256=` and the hex HMAC-SHA256 of `body` under `secret`: the
/// `X-Telemark-Signature` header a receiver checks.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        // HMAC takes keys of any length.
        Err(_) => return String::new(),
    };
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    format!(
        "sha256={}",
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// The engine's events, shared so a restarted webhook task reads on.
pub type SharedAlarmEvents = Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<AlarmEvent>>>;

/// Deliveries in flight at once; more wait their turn.
pub const WEBHOOK_CONCURRENCY: usize = 16;
/// Deliveries waiting beyond those in flight before new ones are dropped
/// (and logged): a webhook that hangs cannot pile up work without bound.
pub const WEBHOOK_BACKLOG: usize = 10_000;

/// An error with its causes, so a refused address is named in the log.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Delivers alarm events to webhooks until the engine is gone, through
/// `policy` (no private targets, no redirects; see `webhook_target`).
pub async fn run_webhooks(
    store: Store,
    events: SharedAlarmEvents,
    policy: crate::webhook_target::WebhookPolicy,
) {
    // Held for the task's life; a restarted task takes it up where the
    // last one left off.
    let mut events = events.lock().await;
    let client = match policy.client() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "no HTTP client: webhooks are off");
            return;
        }
    };
    let policy = std::sync::Arc::new(policy);
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(WEBHOOK_CONCURRENCY));
    let pending = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    while let Some(event) = events.recv().await {
        let hooks = match store.webhooks_above(&event.organisation_path).await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "webhooks not read");
                continue;
            }
        };
        let body = webhook_body(&event);
        for hook in hooks {
            use std::sync::atomic::Ordering;
            if pending.fetch_add(1, Ordering::AcqRel) >= WEBHOOK_CONCURRENCY + WEBHOOK_BACKLOG {
                pending.fetch_sub(1, Ordering::AcqRel);
                tracing::warn!(webhook = hook.id, "webhook backlog full: delivery dropped");
                continue;
            }
            let (client, store, body, policy, slots, pending) = (
                client.clone(),
                store.clone(),
                body.clone(),
                policy.clone(),
                slots.clone(),
                pending.clone(),
            );
            tokio::spawn(async move {
                if let Ok(_slot) = slots.acquire().await {
                    deliver(&client, &policy, &store, &hook, &body).await;
                }
                pending.fetch_sub(1, Ordering::AcqRel);
            });
        }
    }
}

async fn deliver(
    client: &reqwest::Client,
    policy: &crate::webhook_target::WebhookPolicy,
    store: &Store,
    hook: &store::Webhook,
    body: &str,
) {
    let mut outcome = String::new();
    // Checked again at delivery: the hook may predate the rule, and the
    // resolver checks the address connected to.
    let url = match policy.check_url(&hook.url) {
        Ok(_) if !policy.delivers() => {
            outcome = "not sent: webhooks are off ([webhooks] enabled = false)".to_owned();
            None
        }
        Ok(url) => Some(url),
        Err(e) => {
            outcome = format!("refused: {e}");
            None
        }
    };
    for attempt in 0..WEBHOOK_ATTEMPTS {
        let Some(url) = url.clone() else { break };
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(1 << (attempt - 1))).await;
        }
        let response = client
            .post(url)
            .header("content-type", "application/json")
            .header(
                "x-telemark-signature",
                signature(&hook.secret, body.as_bytes()),
            )
            .body(body.to_owned())
            .send()
            .await;
        match response {
            Ok(r) if r.status().is_success() => {
                outcome = format!(
                    "delivered, HTTP {} after {} attempt(s)",
                    r.status().as_u16(),
                    attempt + 1
                );
                break;
            }
            Ok(r) => {
                outcome = format!(
                    "HTTP {} after {} attempt(s)",
                    r.status().as_u16(),
                    attempt + 1
                )
            }
            Err(e) => outcome = format!("{} after {} attempt(s)", error_chain(&e), attempt + 1),
        }
    }
    let delivered = outcome.starts_with("delivered");
    if let Err(e) = store
        .record_audit(&store::NewAuditEntry {
            organisation_id: hook.organisation_id,
            actor: "telemark".into(),
            action: if delivered {
                "webhook.delivered"
            } else {
                "webhook.failed"
            }
            .into(),
            target: format!("webhook {} ({})", hook.id, hook.url),
            before_value: None,
            after_value: Some(outcome),
            address: None,
        })
        .await
    {
        tracing::warn!(error = %e, "webhook delivery not audited");
    }
}
