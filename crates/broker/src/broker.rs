//! The broker's shared state and the operations connections call on it:
//! routing a message, attaching and detaching sessions, wills, shutdown.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use bytes::Bytes;
use mqtt::{ProtocolVersion, QoS};
use smallvec::SmallVec;
use tokio::sync::watch;

use crate::auth::{Action, Authenticator, ClientIdentity};
use crate::hibernation::Hibernation;
use crate::message::Message;
use crate::persistence::{
    LoggedDelivery, LoggedState, Persistence, PersistenceError, Record, SessionKey, WriterSettings,
    unix_ms,
};
use crate::receipt::Holding;
use crate::retained::{RetainedLimits, RetainedMessages};
use crate::session::{
    Delivery, Inflight, MemorySessionStore, QueueBudget, Session, SessionState, SessionStore,
    StoredWill, packet_id_of,
};
use crate::settings::Settings;
use crate::stats::{BrokerStats, StatsSnapshot, add};
use crate::tree::{Match, SubscriptionTree};

pub(crate) fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

pub(crate) struct BrokerShared {
    pub settings: Settings,
    pub auth: Arc<dyn Authenticator>,
    pub sessions: Box<dyn SessionStore>,
    pub tree: RwLock<SubscriptionTree<Arc<str>>>,
    pub retained: RwLock<RetainedMessages>,
    pub stats: BrokerStats,
    /// Serialises session attach and detach so a takeover is one step.
    pub session_lock: Mutex<()>,
    pub shutdown: watch::Sender<bool>,
    /// The same as `shutdown`, read on every turn of a connection's loop
    /// without taking the channel's lock.
    pub stopping: AtomicBool,
    /// Connections open (any state); shutdown waits for it to reach zero.
    pub open_connections: watch::Sender<usize>,
    pub next_client_number: AtomicU64,
    pub hibernation: Hibernation,
    /// Client identifiers of in-process sessions: no listener may use them.
    pub reserved_client_ids: Mutex<HashSet<Arc<str>>>,
    /// Bytes queued for all sessions together, against `max_queued_bytes_total`.
    pub queue_budget: Arc<QueueBudget>,
    /// The journal, when `data_dir` is set.
    pub persistence: Option<Arc<Persistence>>,
}

/// The broker. Cheap to clone; every clone is the same broker.
#[derive(Clone)]
pub struct Broker {
    pub(crate) shared: Arc<BrokerShared>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").finish_non_exhaustive()
    }
}

/// The outcome of attaching a connection to its session.
pub(crate) struct Attached {
    pub session: Arc<Session>,
    pub session_present: bool,
    pub generation: u64,
}

impl Broker {
    /// A broker with in-memory sessions, whatever `data_dir` says. Spawns
    /// its `$SYS` publisher when called inside a tokio runtime.
    pub fn new(settings: Settings, auth: Arc<dyn Authenticator>) -> Self {
        Self::build(settings, auth, None)
    }

    /// A broker that keeps its persistent sessions and retained messages in
    /// the journal under `settings.data_dir` (in memory when unset): what a
    /// journal there holds is recovered first, a damaged tail reported and
    /// dropped. Call inside a tokio runtime (session expiry and delayed
    /// wills of recovered sessions are timers).
    pub fn open(
        settings: Settings,
        auth: Arc<dyn Authenticator>,
    ) -> Result<Self, PersistenceError> {
        let Some(dir) = settings.data_dir.clone() else {
            return Ok(Self::new(settings, auth));
        };
        let spill_dir = dir.join("spill");
        let spill =
            crate::spill::SpillStore::open(spill_dir.clone(), settings.max_spilled_bytes_total)
                .map_err(|source| PersistenceError::Spill {
                    path: spill_dir,
                    source,
                })?;
        let (persistence, recovered) = Persistence::open(WriterSettings {
            dir,
            fsync: settings.fsync,
            fsync_interval: Duration::from_millis(settings.fsync_interval_ms),
            compact_bytes: settings.journal_compact_bytes,
            record_synced_length: settings.journal_record_synced_length,
        })?;
        let broker = Self::build(settings, auth, Some((persistence, Arc::new(spill))));
        broker.shared.restore(recovered);
        Ok(broker)
    }

    fn build(
        settings: Settings,
        auth: Arc<dyn Authenticator>,
        persistence: Option<(Arc<Persistence>, Arc<crate::spill::SpillStore>)>,
    ) -> Self {
        let retained_limits = RetainedLimits {
            max_messages: settings.max_retained_messages,
            max_bytes: settings.max_retained_bytes,
            max_per_client: settings.max_retained_per_client,
        };
        let (persistence, spill) = persistence.unzip();
        let queue_budget = Arc::new(QueueBudget::new(settings.max_queued_bytes_total, spill));
        let broker = Broker {
            shared: Arc::new(BrokerShared {
                settings,
                auth,
                sessions: Box::new(MemorySessionStore::default()),
                tree: RwLock::new(SubscriptionTree::new()),
                retained: RwLock::new(RetainedMessages::with_limits(retained_limits)),
                stats: BrokerStats::default(),
                session_lock: Mutex::new(()),
                shutdown: watch::channel(false).0,
                stopping: AtomicBool::new(false),
                open_connections: watch::channel(0).0,
                next_client_number: AtomicU64::new(1),
                hibernation: Hibernation::default(),
                reserved_client_ids: Mutex::default(),
                queue_budget,
                persistence,
            }),
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            broker.spawn_housekeeping();
        }
        broker
    }

    pub fn settings(&self) -> &Settings {
        &self.shared.settings
    }

    /// Every figure of `$SYS` and `/metrics`.
    pub fn stats(&self) -> StatsSnapshot {
        let s = &self.shared;
        let mut snapshot = s.stats.snapshot(
            s.hibernation.count(),
            s.sessions.len() as u64,
            read(&s.retained).len() as u64,
            read(&s.tree).len() as u64,
            s.queue_budget.charged() as u64,
        );
        if let Some(persistence) = &s.persistence {
            let j = &persistence.stats;
            let get = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
            snapshot.journal_bytes = get(&j.bytes);
            snapshot.journal_records = get(&j.records);
            snapshot.journal_syncs = get(&j.syncs);
            snapshot.journal_compactions = get(&j.compactions);
            snapshot.journal_failures = get(&j.failures);
        }
        if let Some(spill) = s.queue_budget.spill() {
            let get = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
            snapshot.spilled_messages = get(&spill.messages);
            snapshot.spilled_bytes = get(&spill.bytes);
            snapshot.spilled_written = get(&spill.written);
            snapshot.spill_failures = get(&spill.failures);
        }
        snapshot
    }

    /// Publishes a message from inside the process (the platform, `$SYS`):
    /// retained if asked, routed to every matching subscription.
    pub fn publish(&self, message: Message) -> usize {
        let message = Arc::new(message);
        // The process's own messages have no publisher, so only the
        // broker-wide limits apply; one past them is routed unretained.
        if message.retain {
            let mut retained = write(&self.shared.retained);
            match retained.set(message.clone()) {
                Ok(()) => self.shared.record_retained(&message, None),
                Err(_) => add(&self.shared.stats.retained_refused, 1),
            }
        }
        self.shared.route(&message)
    }

    /// Starts a graceful shutdown: stops accepting, publishes the wills of
    /// connected clients and pending delayed wills (their connections are
    /// closed by the server [MQTT-3.1.2-8]), sends MQTT 5 clients DISCONNECT
    /// 0x8B, and waits for connections to close up to the configured timeout.
    pub async fn shutdown(&self) {
        let s = &self.shared;
        if *s.shutdown.borrow() {
            return;
        }
        // Wills first, while every connection is still there to deliver them.
        let mut wills = Vec::new();
        {
            let _guard = s.lock_sessions();
            for session in s.sessions.all() {
                let mut state = session.lock();
                if let Some(w) = state.will.take() {
                    if state.epoch() != 0 {
                        s.record(Record::WillGone {
                            session: key(&session, &state),
                        });
                    }
                    wills.push((session.client_id.clone(), w.will));
                }
            }
        }
        for (client_id, will) in wills {
            s.publish_will(&client_id, will);
        }
        s.stopping.store(true, Ordering::SeqCst);
        if s.shutdown.send_replace(true) {
            return;
        }
        // Connections and local subscribers wait on their session's wake-up
        // and look at `stopping` each time they wake.
        {
            let _guard = s.lock_sessions();
            for session in s.sessions.all() {
                s.wake(&session);
            }
        }
        let mut open = s.open_connections.subscribe();
        let timeout = Duration::from_secs(s.settings.shutdown_timeout_secs);
        let _ = tokio::time::timeout(timeout, open.wait_for(|n| *n == 0)).await;
        // What the connections wrote on their way out is in the journal
        // before shutdown returns.
        if let Some(persistence) = s.persistence.clone() {
            let _ = tokio::task::spawn_blocking(move || persistence.stop()).await;
        }
    }

    /// Resolves once shutdown has begun.
    pub async fn shutting_down(&self) {
        let mut rx = self.shared.shutdown.subscribe();
        let _ = rx.wait_for(|v| *v).await;
    }

    fn spawn_housekeeping(&self) {
        let weak = Arc::downgrade(&self.shared);
        let interval = self.shared.settings.sys_interval_secs;
        tokio::spawn(async move {
            let period = Duration::from_secs(if interval == 0 { 60 } else { interval });
            let mut ticker = tokio::time::interval(period);
            loop {
                ticker.tick().await;
                let Some(shared) = weak.upgrade() else { return };
                if *shared.shutdown.borrow() {
                    return;
                }
                write(&shared.retained).purge_expired();
                if interval > 0 {
                    let broker = Broker { shared };
                    for (topic, value) in broker.stats().sys_topics() {
                        broker.publish(Message::new(
                            topic,
                            Bytes::from(value),
                            QoS::AtMostOnce,
                            true,
                        ));
                    }
                }
            }
        });
    }
}

impl BrokerShared {
    pub(crate) fn lock_sessions(&self) -> MutexGuard<'_, ()> {
        self.session_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Sends `message` to every matching subscription; returns how many
    /// sessions it went to.
    pub(crate) fn route(&self, message: &Arc<Message>) -> usize {
        let mut logged = Vec::new();
        let delivered = self.route_holding(message, None, &mut logged);
        self.record_route(message, logged, None, None);
        delivered
    }

    /// [`Self::route`] for a client's message whose acknowledgement waits
    /// for the subscribers that keep messages: each one reached gets a
    /// receipt from `holding`. The deliveries to persistent sessions are
    /// added to `logged`, for [`Self::record_route`].
    pub(crate) fn route_holding(
        &self,
        message: &Arc<Message>,
        mut holding: Option<&mut Holding<'_>>,
        logged: &mut Vec<LoggedDelivery>,
    ) -> usize {
        // Per subscriber: the highest QoS of its matching subscriptions
        // [MQTT-3.3.4-2] with all their identifiers [MQTT-3.3.4-3].
        // Inline for the few subscribers most messages have: no allocation
        // per message.
        let mut targets = Targets::new();
        let mut shared_targets = Targets::new();
        {
            let tree = read(&self.tree);
            tree.for_each_match(&message.topic, |m| match m {
                Match::Single(client, sub) => {
                    // [MQTT-3.8.3-3] no local: not back to the publisher.
                    if sub.options.no_local && message.publisher.as_ref() == Some(client) {
                        return;
                    }
                    targets.push((
                        client.clone(),
                        sub.options.qos,
                        sub.options.retain_as_published,
                        sub.identifier.into_iter().collect(),
                    ));
                }
                Match::Shared(group) => {
                    let picked = group.pick(|client| {
                        self.sessions
                            .get(client)
                            .is_some_and(|s| s.lock().connected)
                    });
                    if let Some((client, sub)) = picked {
                        // A shared delivery is its own copy, not merged.
                        shared_targets.push((
                            client.clone(),
                            sub.options.qos,
                            sub.options.retain_as_published,
                            sub.identifier.into_iter().collect(),
                        ));
                    }
                }
            });
        }
        merge_per_client(&mut targets);
        targets.append(&mut shared_targets);
        // Every target's session under one look at the store (a fan-out to
        // a thousand subscribers took its lock a thousand times).
        let mut sessions: SmallVec<[Option<Arc<Session>>; 4]> =
            SmallVec::with_capacity(targets.len());
        self.sessions
            .get_each(&mut targets.iter().map(|t| &*t.0), &mut |session| {
                sessions.push(session)
            });
        let mut delivered = 0;
        for ((_, qos, retain_as_published, ids), session) in targets.into_iter().zip(sessions) {
            let Some(session) = session else {
                continue;
            };
            // [MQTT-3.3.1-12] [MQTT-3.3.1-13] retain flag as published only
            // when the subscription asks for it.
            let retain = retain_as_published && message.retain;
            if self.deliver_holding(
                &session,
                message,
                qos,
                retain,
                ids,
                holding.as_deref_mut(),
                logged,
            ) {
                delivered += 1;
            }
        }
        delivered
    }

    /// Journals the end of a persistent session's delivery (acknowledged,
    /// dropped); nothing for one the journal does not hold (`seq` 0).
    pub(crate) fn record_done(&self, session: &Session, state: &SessionState, seq: u64) {
        if seq != 0 {
            self.record(Record::Done {
                session: key(session, state),
                seq,
            });
        }
    }

    /// Hands a record to the journal; the answer `holding` makes waits
    /// until it is durable.
    pub(crate) fn record_kept(&self, record: Record, holding: &mut Holding<'_>) {
        if let Some(persistence) = &self.persistence {
            persistence.write_kept(record, Some(holding.receipt()));
        }
    }

    /// Hands a record to the journal, if there is one.
    pub(crate) fn record(&self, record: Record) {
        if let Some(persistence) = &self.persistence {
            persistence.write(record);
        }
    }

    /// Journals a routed message with the persistent sessions it was queued
    /// for and, for a QoS 2 PUBLISH of a persistent session, its packet
    /// identifier now awaiting PUBREL. With `holding`, the publisher's
    /// acknowledgement waits until the record is durable.
    pub(crate) fn record_route(
        &self,
        message: &Arc<Message>,
        logged: Vec<LoggedDelivery>,
        received: Option<(SessionKey, u16)>,
        holding: Option<&mut Holding<'_>>,
    ) {
        if logged.is_empty() && received.is_none() {
            return;
        }
        let Some(persistence) = &self.persistence else {
            return;
        };
        let record = Record::Route {
            message: message.clone(),
            deliveries: logged,
            received,
        };
        persistence.write_kept(record, holding.map(Holding::receipt));
    }

    /// Journals a change of the retained messages; call with the retained
    /// lock held, so the journal sees changes in the order they were made.
    /// `$SYS` topics are the broker's own, made again every interval.
    pub(crate) fn record_retained(
        &self,
        message: &Arc<Message>,
        holding: Option<&mut Holding<'_>>,
    ) {
        let Some(persistence) = &self.persistence else {
            return;
        };
        if is_server_topic(&message.topic) {
            return;
        }
        let record = if message.payload.is_empty() {
            Record::RetainCleared {
                topic: message.topic.clone(),
            }
        } else {
            Record::Retained {
                message: message.clone(),
            }
        };
        persistence.write_kept(record, holding.map(Holding::receipt));
    }

    /// Queues one message for one session and wakes its connection.
    pub(crate) fn deliver(
        &self,
        session: &Session,
        message: &Arc<Message>,
        subscription_qos: QoS,
        retain: bool,
        subscription_ids: Vec<u32>,
    ) -> bool {
        let mut logged = Vec::new();
        let delivered = self.deliver_holding(
            session,
            message,
            subscription_qos,
            retain,
            subscription_ids,
            None,
            &mut logged,
        );
        self.record_route(message, logged, None, None);
        delivered
    }

    #[allow(clippy::too_many_arguments)]
    fn deliver_holding(
        &self,
        session: &Session,
        message: &Arc<Message>,
        subscription_qos: QoS,
        retain: bool,
        subscription_ids: Vec<u32>,
        holding: Option<&mut Holding<'_>>,
        logged: &mut Vec<LoggedDelivery>,
    ) -> bool {
        // [MQTT-3.8.4-8] the lower of published and granted QoS.
        let qos = message.qos.min(subscription_qos);
        let mut state = session.lock();
        if !state.connected && qos == QoS::AtMostOnce && !self.settings.queue_qos0_offline {
            return false;
        }
        // Only what the publisher is to acknowledge is held: the message's
        // own QoS, whatever the subscription made of it.
        let receipt = match holding {
            Some(holding) if state.keeps_messages && message.qos != QoS::AtMostOnce => {
                Some(holding.receipt())
            }
            _ => None,
        };
        // A persistent session's QoS 1 and 2 deliveries are journaled.
        let seq = if state.epoch() != 0 && qos != QoS::AtMostOnce {
            let seq = state.take_seq();
            logged.push(LoggedDelivery {
                session: key(session, &state),
                seq,
                qos,
                retain,
                subscription_ids: subscription_ids.clone(),
            });
            seq
        } else {
            0
        };
        let delivery = Delivery {
            message: message.clone(),
            qos,
            retain,
            subscription_ids,
            receipt,
            seq,
        };
        // A session with a queue of its own (the embedder's services) is
        // bounded by its count; every other by count and bytes.
        let (limit, byte_limit) = match state.queue_limit() {
            Some(own) => (own, None),
            None => (
                self.settings.max_queued_messages,
                Some(self.settings.max_queued_bytes),
            ),
        };
        let budget = byte_limit.is_some().then_some(&self.queue_budget);
        let mut dropped_seqs = Vec::new();
        let dropped = state.enqueue_within(
            delivery,
            limit,
            byte_limit,
            self.settings.queue_policy,
            budget,
            &mut dropped_seqs,
        );
        if dropped > 0 {
            add(&self.stats.messages_dropped, dropped);
            for seq in dropped_seqs {
                self.record_done(session, &state, seq);
            }
        }
        let connected = state.connected;
        drop(state);
        if connected {
            self.wake(session);
        }
        true
    }

    /// Wakes the connection of `session`, awake or hibernating.
    pub(crate) fn wake(&self, session: &Session) {
        session.wake.notify_one();
        self.wake_hibernated(session);
    }

    /// Wakes the connection of `session` if it hibernates. Called after the
    /// change it is woken for (see `hibernation` for why that order).
    pub(crate) fn wake_hibernated(&self, session: &Session) {
        if session.hibernated.load(Ordering::SeqCst) != 0 {
            let token = session.hibernated.swap(0, Ordering::SeqCst);
            if token != 0 {
                self.hibernation.wake(token);
            }
        }
    }

    /// Publishes a will on behalf of `client_id` (its ACL was checked at CONNECT).
    pub(crate) fn publish_will(&self, client_id: &Arc<str>, will: mqtt::Will) {
        let message = Arc::new(Message {
            topic: will.topic.as_str().into(),
            payload: will.payload,
            qos: will.qos,
            retain: will.retain,
            properties: Message::forwardable(will.properties),
            publisher: Some(client_id.clone()),
            received_at: std::time::Instant::now(),
        });
        // A will past the retained limits still goes out, unretained: the
        // subscribers of now hear of the death either way.
        if message.retain {
            let mut retained = write(&self.retained);
            match retained.set(message.clone()) {
                Ok(()) => self.record_retained(&message, None),
                Err(refusal) => {
                    add(&self.stats.retained_refused, 1);
                    tracing::debug!(client_id = %client_id, %refusal, "will not retained");
                }
            }
        }
        self.route(&message);
    }

    /// Whether `identity` may publish `will`; a will it may not publish is not kept.
    pub(crate) fn will_allowed(&self, identity: &ClientIdentity, will: &mqtt::Will) -> bool {
        !is_server_topic(&will.topic) && self.auth.authorize(identity, Action::Publish, &will.topic)
    }

    /// Attaches a new connection to its session: takes over a connected one
    /// [MQTT-3.1.4-3], starts a new session or resumes the old one
    /// [MQTT-3.1.2-4] [MQTT-3.1.2-5], and sets the connection's will.
    pub(crate) fn attach(
        self: &Arc<Self>,
        client_id: &Arc<str>,
        protocol: ProtocolVersion,
        clean_start: bool,
        expiry_interval: u32,
        will: Option<Box<StoredWill>>,
    ) -> Attached {
        let _guard = self.lock_sessions();
        let existing = self.sessions.get(client_id);
        let mut will_to_publish = None;
        let mut taken_over = false;
        let (session, session_present) = match existing {
            Some(session) => {
                let mut state = session.lock();
                // [MQTT-3.1.4-3] the existing connection is closed, in MQTT 5
                // with 0x8E first: it sees the new generation when woken.
                taken_over = state.connected;
                // The old connection ended without DISCONNECT: its will goes
                // out unless it is delayed and this connection resumes the
                // session in time [MQTT-3.1.3-9].
                if let Some(old) = state.will.take()
                    && (clean_start || (state.connected && old.delay.is_zero()))
                {
                    will_to_publish = Some(old.will);
                }
                let present = !clean_start;
                let old_subs = if clean_start {
                    if state.epoch() != 0 {
                        self.record(Record::SessionEnded {
                            session: key(&session, &state),
                        });
                    }
                    state.reset(protocol)
                } else {
                    Default::default()
                };
                // Lock order is tree before session state: let go of the state first.
                drop(state);
                if !old_subs.is_empty() {
                    let mut tree = write(&self.tree);
                    for filter in old_subs.filters() {
                        tree.unsubscribe(client_id, filter);
                    }
                }
                (session, present)
            }
            None => {
                let session = Arc::new(Session::new(client_id.clone(), protocol));
                self.sessions.insert(session.clone());
                (session, false)
            }
        };
        let generation = {
            let mut state = session.lock();
            state.protocol = protocol;
            state.generation += 1;
            state.connected = true;
            state.expiry_interval = expiry_interval;
            state.will = will;
            if let Some(persistence) = &self.persistence
                && (expiry_interval > 0 || state.epoch() != 0)
            {
                let fresh = state.epoch() == 0;
                if fresh {
                    state.set_journal(persistence.new_epoch(), 1);
                }
                let session_key = key(&session, &state);
                persistence.write(Record::Session {
                    session: session_key.clone(),
                    fresh,
                    protocol,
                    expiry: expiry_interval,
                    will: state.will.clone(),
                    last_seq: state.next_seq() - 1,
                });
                if fresh {
                    // A session that was not persistent until now keeps
                    // the subscriptions it has.
                    for (filter, subscription) in state.subscriptions.iter() {
                        persistence.write(Record::Subscribed {
                            session: session_key.clone(),
                            filter: filter.to_owned(),
                            subscription: *subscription,
                        });
                    }
                }
            }
            state.generation
        };
        drop(_guard);
        if taken_over {
            session.wake.notify_waiters();
            self.wake_hibernated(&session);
        }
        if let Some(will) = will_to_publish {
            self.publish_will(client_id, will);
        }
        Attached {
            session,
            session_present,
            generation,
        }
    }

    /// Detaches a closed connection from its session. `publish_will` is false
    /// after a normal DISCONNECT [MQTT-3.1.2-10].
    /// Returns false when the session had already been taken over.
    pub(crate) fn detach(
        self: &Arc<Self>,
        session: &Arc<Session>,
        generation: u64,
        publish_will: bool,
    ) -> bool {
        let guard = self.lock_sessions();
        let mut state = session.lock();
        if state.generation != generation {
            // Taken over: the new connection owns the session now.
            return false;
        }
        state.connected = false;
        state.release_idle();
        if !publish_will && state.will.take().is_some() && state.epoch() != 0 {
            self.record(Record::WillGone {
                session: key(session, &state),
            });
        }
        let expiry = state.expiry_interval;
        let will_delay = state.will.as_ref().map(|w| w.delay);
        if state.epoch() != 0 && expiry != 0 {
            self.record(Record::Detached {
                session: key(session, &state),
                at_ms: unix_ms(std::time::SystemTime::now()),
                expiry,
            });
        }
        drop(state);
        drop(guard);
        if expiry == 0 {
            self.end_session(session);
            return true;
        }
        self.await_return(session, generation, expiry, will_delay, Duration::ZERO);
        true
    }

    /// A disconnected session `gone_for` ago: its will goes out after its
    /// delay [MQTT-3.1.3-9] and the session ends after its expiry
    /// [MQTT-3.1.2-23], unless a connection resumes it first.
    fn await_return(
        self: &Arc<Self>,
        session: &Arc<Session>,
        generation: u64,
        expiry: u32,
        will_delay: Option<Duration>,
        gone_for: Duration,
    ) {
        let expiry_total = Duration::from_secs(u64::from(expiry));
        if let Some(delay) = will_delay {
            let delay = delay.min(expiry_total).saturating_sub(gone_for);
            let shared = Arc::downgrade(self);
            let session = session.clone();
            let publish = move |shared: &Arc<BrokerShared>| {
                let will = {
                    let mut state = session.lock();
                    if state.generation != generation || state.connected {
                        return;
                    }
                    let will = state.will.take();
                    if will.is_some() && state.epoch() != 0 {
                        shared.record(Record::WillGone {
                            session: key(&session, &state),
                        });
                    }
                    will
                };
                if let Some(w) = will {
                    shared.publish_will(&session.client_id, w.will);
                }
            };
            if delay.is_zero() {
                publish(self);
            } else {
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    if let Some(shared) = shared.upgrade() {
                        publish(&shared);
                    }
                });
            }
        }
        if expiry != u32::MAX {
            let left = expiry_total.saturating_sub(gone_for);
            let shared = Arc::downgrade(self);
            let session = session.clone();
            let end = move |shared: &Arc<BrokerShared>| {
                let stale = {
                    let state = session.lock();
                    state.generation != generation || state.connected
                };
                if !stale {
                    shared.end_session(&session);
                }
            };
            if left.is_zero() {
                end(self);
            } else {
                tokio::spawn(async move {
                    tokio::time::sleep(left).await;
                    if let Some(shared) = shared.upgrade() {
                        end(&shared);
                    }
                });
            }
        }
    }

    /// Rebuilds the persistent sessions and retained messages the journal
    /// held, before any listener is served. A session whose connection was
    /// open at the crash counts as disconnected now: its will waits its
    /// delay, its expiry starts now.
    pub(crate) fn restore(self: &Arc<Self>, recovered: LoggedState) {
        let now_ms = unix_ms(std::time::SystemTime::now());
        {
            let mut retained = write(&self.retained);
            for message in recovered.retained.into_values() {
                if !message.is_expired() && retained.set(message).is_err() {
                    add(&self.stats.retained_refused, 1);
                }
            }
        }
        for (client, logged) in recovered.sessions {
            let session = Arc::new(Session::new(client, logged.protocol));
            let (expiry, will_delay, gone_for) = {
                let mut state = session.lock();
                state.set_journal(logged.epoch, logged.last_seq + 1);
                state.expiry_interval = logged.expiry;
                state.will = logged.will;
                {
                    let mut tree = write(&self.tree);
                    for (filter, subscription) in logged.subscriptions {
                        tree.subscribe(session.client_id.clone(), &filter, subscription);
                        state.subscriptions.insert(filter, subscription);
                    }
                }
                let traffic = state.traffic_mut();
                // Past the memory bound, recovered queues go to disk too.
                traffic.queue.use_budget(&self.queue_budget);
                traffic.incoming_qos2.extend(logged.incoming);
                for (seq, held) in logged.deliveries {
                    if held.released {
                        let id = packet_id_of(seq);
                        if traffic.claim_packet_id(id) {
                            traffic.push_inflight(id, Inflight::Released(seq));
                        }
                    } else if let Some(message) = held.message {
                        // (The picture recovery hands over keeps its messages.)
                        traffic.queue.push_back(Delivery {
                            message,
                            qos: held.qos,
                            retain: held.retain,
                            subscription_ids: held.subscription_ids,
                            receipt: None,
                            seq,
                        });
                    }
                }
                state.release_idle();
                let gone_for = match logged.detached_at_ms {
                    Some(at) => Duration::from_millis(now_ms.saturating_sub(at)),
                    None => {
                        self.record(Record::Detached {
                            session: key(&session, &state),
                            at_ms: now_ms,
                            expiry: state.expiry_interval,
                        });
                        Duration::ZERO
                    }
                };
                (
                    state.expiry_interval,
                    state.will.as_ref().map(|w| w.delay),
                    gone_for,
                )
            };
            self.sessions.insert(session.clone());
            if expiry == 0 {
                self.end_session(&session);
            } else {
                self.await_return(&session, 0, expiry, will_delay, gone_for);
            }
        }
    }

    /// Ends a session: its subscriptions go, a will still pending goes out
    /// [MQTT-3.1.3-9], the store forgets it.
    pub(crate) fn end_session(&self, session: &Arc<Session>) {
        let (subscriptions, will) = {
            let _guard = self.lock_sessions();
            let mut state = session.lock();
            if state.connected {
                return;
            }
            if !self.sessions.remove(session) {
                return;
            }
            if state.epoch() != 0 {
                self.record(Record::SessionEnded {
                    session: key(session, &state),
                });
            }
            (std::mem::take(&mut state.subscriptions), state.will.take())
        };
        {
            let mut tree = write(&self.tree);
            for filter in subscriptions.filters() {
                tree.unsubscribe(&session.client_id, filter);
            }
        }
        if let Some(w) = will {
            self.publish_will(&session.client_id, w.will);
        }
    }

    pub(crate) fn is_reserved_client_id(&self, client_id: &str) -> bool {
        self.reserved_client_ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(client_id)
    }

    /// Removes the subscriptions of a resumed session that `identity` may
    /// no longer make, and the queued messages only they matched. Returns
    /// how many subscriptions went.
    pub(crate) fn revoke_unauthorized(
        &self,
        session: &Session,
        identity: &ClientIdentity,
    ) -> usize {
        let revoked: Vec<String> = {
            let state = session.lock();
            state
                .subscriptions
                .filters()
                .filter(|filter| {
                    let inner =
                        mqtt::topic::SharedFilter::parse(filter).map_or(*filter, |s| s.filter);
                    !self.auth.authorize(identity, Action::Subscribe, inner)
                })
                .map(str::to_owned)
                .collect()
        };
        if revoked.is_empty() {
            return 0;
        }
        {
            let mut tree = write(&self.tree);
            for filter in &revoked {
                tree.unsubscribe(&session.client_id, filter);
            }
        }
        let mut state = session.lock();
        for filter in &revoked {
            state.subscriptions.remove(filter);
            if state.epoch() != 0 {
                self.record(Record::Unsubscribed {
                    session: key(session, &state),
                    filter: filter.clone(),
                });
            }
        }
        let kept: Vec<String> = state
            .subscriptions
            .filters()
            .map(|f| {
                mqtt::topic::SharedFilter::parse(f)
                    .map_or(f, |s| s.filter)
                    .to_owned()
            })
            .collect();
        if state.queued() > 0 {
            let mut dropped = Vec::new();
            state.traffic_mut().queue.retain(|delivery| {
                let keep = kept
                    .iter()
                    .any(|filter| mqtt::topic::matches(filter, &delivery.message.topic));
                if !keep && delivery.seq != 0 {
                    dropped.push(delivery.seq);
                }
                keep
            });
            for seq in dropped {
                self.record_done(session, &state, seq);
            }
        }
        tracing::info!(client_id = %session.client_id, revoked = revoked.len(), "resumed session lost subscriptions its identity may no longer make");
        revoked.len()
    }

    pub(crate) fn next_client_id(&self) -> String {
        let n = self.next_client_number.fetch_add(1, Ordering::Relaxed);
        let random: u32 = rand::random();
        format!("telemark-{n:x}-{random:08x}")
    }
}

/// A session's place in the journal (its `epoch` is set).
pub(crate) fn key(session: &Session, state: &SessionState) -> SessionKey {
    SessionKey {
        client: session.client_id.clone(),
        epoch: state.epoch(),
    }
}

/// `$SYS/...` is the broker's own: clients do not publish there [MQTT-4.7.2].
pub(crate) fn is_server_topic(topic: &str) -> bool {
    topic == "$SYS" || topic.starts_with("$SYS/")
}

type Target = (Arc<str>, QoS, bool, Vec<u32>);
type Targets = SmallVec<[Target; 4]>;

/// Folds several matching subscriptions of one client into one delivery.
/// The tree's keys of one client share one allocation, so the pointer is
/// the client.
fn merge_per_client(targets: &mut Targets) {
    if targets.len() < 2 {
        return;
    }
    targets.sort_unstable_by_key(|t| Arc::as_ptr(&t.0) as *const u8 as usize);
    let mut merged = Targets::with_capacity(targets.len());
    for t in targets.drain(..) {
        match merged.last_mut() {
            Some(last) if Arc::ptr_eq(&last.0, &t.0) => {
                last.1 = last.1.max(t.1);
                last.2 |= t.2;
                last.3.extend(t.3);
            }
            _ => merged.push(t),
        }
    }
    *targets = merged;
}
