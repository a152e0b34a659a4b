//! The state the journal describes, rebuilt by applying its records in
//! order: at start-up it is what the broker recovers; while running the
//! journal's writer keeps it up to date so a compaction writes it out whole
//! without asking the broker for anything.
//!
//! The writer's picture holds no message bodies, only where each one's
//! route record starts in the journal: what sessions are owed may be far
//! larger than memory, and a compaction copies those records one at a time
//! from the old file to the new. The picture the broker is rebuilt from at
//! start-up keeps the messages (`LoggedState::with_messages`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use mqtt::{ProtocolVersion, QoS};

use super::record::{LoggedDelivery, Record, SessionKey};
use crate::message::Message;
use crate::session::StoredWill;
use crate::tree::Subscription;

/// A delivery the journal still holds for a session.
#[derive(Debug, Clone)]
pub(crate) struct HeldDelivery {
    /// Only in a picture that keeps messages.
    pub message: Option<Arc<Message>>,
    /// Where the route record carrying the message starts in the journal.
    pub route: u64,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    /// PUBREC came back: only PUBREL and PUBCOMP remain.
    pub released: bool,
}

#[derive(Debug)]
pub(crate) struct LoggedSession {
    pub epoch: u64,
    pub protocol: ProtocolVersion,
    pub expiry: u32,
    pub will: Option<Box<StoredWill>>,
    /// When its connection went (Unix ms); `None` if it was connected when
    /// the journal ends.
    pub detached_at_ms: Option<u64>,
    pub subscriptions: HashMap<String, Subscription>,
    pub deliveries: BTreeMap<u64, HeldDelivery>,
    /// Incoming QoS 2 packet identifiers awaiting PUBREL.
    pub incoming: BTreeSet<u16>,
    /// Deliveries whose end was written before the route that queued them
    /// (two threads write them): `true` if only released.
    early: HashMap<u64, bool>,
    pub last_seq: u64,
}

impl LoggedSession {
    fn new(epoch: u64, protocol: ProtocolVersion) -> Self {
        LoggedSession {
            epoch,
            protocol,
            expiry: 0,
            will: None,
            detached_at_ms: None,
            subscriptions: HashMap::new(),
            deliveries: BTreeMap::new(),
            incoming: BTreeSet::new(),
            early: HashMap::new(),
            last_seq: 0,
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct LoggedState {
    pub sessions: HashMap<Arc<str>, LoggedSession>,
    pub retained: HashMap<Arc<str>, Arc<Message>>,
    pub next_epoch: u64,
    keep_messages: bool,
}

/// What a snapshot writes through: the record, and where its frame starts
/// in the new journal.
pub(crate) type Emit<'a, E> = dyn FnMut(Record) -> Result<u64, E> + 'a;
/// Reads back the message of the route record at an offset of the journal
/// the picture describes.
pub(crate) type ReadRoute<'a, E> = dyn FnMut(u64) -> Result<Arc<Message>, E> + 'a;

impl LoggedState {
    /// A picture that keeps each queued message (the broker's, at start-up).
    pub(crate) fn with_messages() -> Self {
        LoggedState {
            keep_messages: true,
            ..LoggedState::default()
        }
    }

    fn session_mut(&mut self, key: &SessionKey) -> Option<&mut LoggedSession> {
        self.sessions
            .get_mut(&key.client)
            .filter(|s| s.epoch == key.epoch)
    }

    /// Applies `record`, whose frame starts at offset `at` of the journal.
    pub(crate) fn apply(&mut self, record: Record, at: u64) {
        match record {
            Record::Epochs { next } => self.next_epoch = self.next_epoch.max(next),
            Record::Session {
                session,
                fresh,
                protocol,
                expiry,
                will,
                last_seq,
            } => {
                self.next_epoch = self.next_epoch.max(session.epoch + 1);
                let entry = self.sessions.entry(session.client.clone());
                let logged = match entry {
                    std::collections::hash_map::Entry::Occupied(mut o) => {
                        if fresh || o.get().epoch != session.epoch {
                            o.insert(LoggedSession::new(session.epoch, protocol));
                        }
                        o.into_mut()
                    }
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(LoggedSession::new(session.epoch, protocol))
                    }
                };
                logged.protocol = protocol;
                logged.expiry = expiry;
                logged.will = will;
                logged.detached_at_ms = None;
                logged.last_seq = logged.last_seq.max(last_seq);
            }
            Record::Detached {
                session,
                at_ms,
                expiry,
            } => {
                if let Some(s) = self.session_mut(&session) {
                    s.detached_at_ms = Some(at_ms);
                    s.expiry = expiry;
                }
            }
            Record::WillGone { session } => {
                if let Some(s) = self.session_mut(&session) {
                    s.will = None;
                }
            }
            Record::SessionEnded { session } => {
                if self.session_mut(&session).is_some() {
                    self.sessions.remove(&session.client);
                }
            }
            Record::Subscribed {
                session,
                filter,
                subscription,
            } => {
                if let Some(s) = self.session_mut(&session) {
                    s.subscriptions.insert(filter, subscription);
                }
            }
            Record::Unsubscribed { session, filter } => {
                if let Some(s) = self.session_mut(&session) {
                    s.subscriptions.remove(&filter);
                }
            }
            Record::Route {
                message,
                deliveries,
                received,
            } => {
                let keep = self.keep_messages;
                for d in deliveries {
                    let Some(s) = self.session_mut(&d.session) else {
                        continue;
                    };
                    s.last_seq = s.last_seq.max(d.seq);
                    let released = match s.early.remove(&d.seq) {
                        Some(true) => true,
                        Some(false) => continue,
                        None => false,
                    };
                    s.deliveries.insert(
                        d.seq,
                        HeldDelivery {
                            message: keep.then(|| message.clone()),
                            route: at,
                            qos: d.qos,
                            retain: d.retain,
                            subscription_ids: d.subscription_ids,
                            released,
                        },
                    );
                }
                if let Some((session, packet_id)) = received
                    && let Some(s) = self.session_mut(&session)
                {
                    s.incoming.insert(packet_id);
                }
            }
            Record::Released { session, seq } => {
                if let Some(s) = self.session_mut(&session) {
                    match s.deliveries.get_mut(&seq) {
                        Some(d) => d.released = true,
                        None => {
                            s.early.entry(seq).or_insert(true);
                        }
                    }
                }
            }
            Record::Done { session, seq } => {
                if let Some(s) = self.session_mut(&session)
                    && s.deliveries.remove(&seq).is_none()
                {
                    s.early.insert(seq, false);
                }
            }
            Record::Received { session, packet_id } => {
                if let Some(s) = self.session_mut(&session) {
                    s.incoming.insert(packet_id);
                }
            }
            Record::ReceiveDone { session, packet_id } => {
                if let Some(s) = self.session_mut(&session) {
                    s.incoming.remove(&packet_id);
                }
            }
            Record::Retained { message } => {
                self.retained.insert(message.topic.clone(), message);
            }
            Record::RetainCleared { topic } => {
                self.retained.remove(&topic);
            }
        }
    }

    /// After recovery no route written before the crash is still coming:
    /// ends written ahead of their route are forgotten.
    pub(crate) fn forget_early_ends(&mut self) {
        for s in self.sessions.values_mut() {
            s.early.clear();
        }
    }

    /// Writes records that rebuild this state from nothing (what a
    /// compaction or a start writes) through `emit`, one at a time; a
    /// message queued for several sessions is written once. Messages this
    /// picture does not keep are read back with `read`; one that has
    /// expired is left out. Returns where each delivery is in the new
    /// journal, for [`LoggedState::relocate`] once that journal is in place
    /// (until then the old one is the truth).
    pub(crate) fn write_snapshot<E>(
        &self,
        read: &mut ReadRoute<'_, E>,
        emit: &mut Emit<'_, E>,
    ) -> Result<Relocation, E> {
        emit(Record::Epochs {
            next: self.next_epoch,
        })?;
        // (client, seq) of the deliveries, by the route record that
        // carries their message.
        let mut routes: BTreeMap<u64, Vec<(Arc<str>, u64)>> = BTreeMap::new();
        let mut released = Vec::new();
        for (client, s) in &self.sessions {
            let key = SessionKey {
                client: client.clone(),
                epoch: s.epoch,
            };
            emit(Record::Session {
                session: key.clone(),
                fresh: true,
                protocol: s.protocol,
                expiry: s.expiry,
                will: s.will.clone(),
                last_seq: s.last_seq,
            })?;
            if let Some(at_ms) = s.detached_at_ms {
                emit(Record::Detached {
                    session: key.clone(),
                    at_ms,
                    expiry: s.expiry,
                })?;
            }
            for (filter, subscription) in &s.subscriptions {
                emit(Record::Subscribed {
                    session: key.clone(),
                    filter: filter.clone(),
                    subscription: *subscription,
                })?;
            }
            for packet_id in &s.incoming {
                emit(Record::Received {
                    session: key.clone(),
                    packet_id: *packet_id,
                })?;
            }
            for (seq, only_released) in &s.early {
                let session = key.clone();
                let seq = *seq;
                emit(if *only_released {
                    Record::Released { session, seq }
                } else {
                    Record::Done { session, seq }
                })?;
            }
            for (seq, d) in &s.deliveries {
                routes
                    .entry(d.route)
                    .or_default()
                    .push((client.clone(), *seq));
                if d.released {
                    released.push((key.clone(), *seq));
                }
            }
        }
        let mut relocation = Relocation::default();
        for (route, members) in routes {
            let kept = members.first().and_then(|(client, seq)| {
                self.sessions
                    .get(client)
                    .and_then(|s| s.deliveries.get(seq))
                    .and_then(|d| d.message.clone())
            });
            let message = match kept {
                Some(message) => message,
                None => read(route)?,
            };
            if message.is_expired() {
                relocation.expired.extend(members);
                continue;
            }
            let mut deliveries = Vec::with_capacity(members.len());
            for (client, seq) in &members {
                if let Some(s) = self.sessions.get(client)
                    && let Some(d) = s.deliveries.get(seq)
                {
                    deliveries.push(LoggedDelivery {
                        session: SessionKey {
                            client: client.clone(),
                            epoch: s.epoch,
                        },
                        seq: *seq,
                        qos: d.qos,
                        retain: d.retain,
                        subscription_ids: d.subscription_ids.clone(),
                    });
                }
            }
            let at = emit(Record::Route {
                message,
                deliveries,
                received: None,
            })?;
            relocation
                .moved
                .extend(members.into_iter().map(|(client, seq)| (client, seq, at)));
        }
        let expired: BTreeSet<(&Arc<str>, u64)> = relocation
            .expired
            .iter()
            .map(|(c, seq)| (c, *seq))
            .collect();
        for (session, seq) in released {
            if !expired.contains(&(&session.client, seq)) {
                emit(Record::Released { session, seq })?;
            }
        }
        for message in self.retained.values() {
            if !message.is_expired() {
                emit(Record::Retained {
                    message: message.clone(),
                })?;
            }
        }
        Ok(relocation)
    }

    /// Points every delivery into the journal a snapshot wrote, now that it
    /// replaced the old one, and forgets the expired ones it left out.
    pub(crate) fn relocate(&mut self, relocation: Relocation) {
        for (client, seq, at) in relocation.moved {
            if let Some(d) = self
                .sessions
                .get_mut(&client)
                .and_then(|s| s.deliveries.get_mut(&seq))
            {
                d.route = at;
            }
        }
        for (client, seq) in relocation.expired {
            if let Some(s) = self.sessions.get_mut(&client) {
                s.deliveries.remove(&seq);
            }
        }
    }
}

/// Where a snapshot put each delivery: (client, seq, offset of its route
/// record in the new journal); and the (client, seq) it left out as expired.
#[derive(Debug, Default)]
pub(crate) struct Relocation {
    moved: Vec<(Arc<str>, u64, u64)>,
    expired: Vec<(Arc<str>, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn key(client: &str, epoch: u64) -> SessionKey {
        SessionKey {
            client: client.into(),
            epoch,
        }
    }

    fn session(client: &str, epoch: u64, fresh: bool) -> Record {
        Record::Session {
            session: key(client, epoch),
            fresh,
            protocol: ProtocolVersion::V5,
            expiry: 3600,
            will: None,
            last_seq: 0,
        }
    }

    fn route(seq: u64, client: &str, epoch: u64) -> Record {
        Record::Route {
            message: Arc::new(Message::new(
                "t",
                Bytes::from(seq.to_string()),
                QoS::ExactlyOnce,
                false,
            )),
            deliveries: vec![LoggedDelivery {
                session: key(client, epoch),
                seq,
                qos: QoS::ExactlyOnce,
                retain: false,
                subscription_ids: vec![],
            }],
            received: None,
        }
    }

    fn seqs(state: &LoggedState, client: &str) -> Vec<(u64, bool)> {
        state.sessions[client]
            .deliveries
            .iter()
            .map(|(seq, d)| (*seq, d.released))
            .collect()
    }

    #[test]
    fn deliveries_live_until_done_and_ends_may_come_first() {
        let mut state = LoggedState::default();
        state.apply(session("c", 1, true), 0);
        state.apply(route(1, "c", 1), 0);
        state.apply(route(2, "c", 1), 0);
        state.apply(
            Record::Released {
                session: key("c", 1),
                seq: 2,
            },
            0,
        );
        // Written by the subscriber's thread before the publisher's route.
        state.apply(
            Record::Done {
                session: key("c", 1),
                seq: 3,
            },
            0,
        );
        state.apply(
            Record::Released {
                session: key("c", 1),
                seq: 4,
            },
            0,
        );
        state.apply(route(3, "c", 1), 0);
        state.apply(route(4, "c", 1), 0);
        state.apply(
            Record::Done {
                session: key("c", 1),
                seq: 1,
            },
            0,
        );
        assert_eq!(seqs(&state, "c"), [(2, true), (4, true)]);
        assert_eq!(state.sessions["c"].last_seq, 4);
    }

    #[test]
    fn an_old_incarnations_records_do_not_touch_a_new_one() {
        let mut state = LoggedState::default();
        state.apply(session("c", 1, true), 0);
        state.apply(route(1, "c", 1), 0);
        state.apply(session("c", 2, true), 0);
        state.apply(route(2, "c", 1), 0);
        state.apply(
            Record::Done {
                session: key("c", 1),
                seq: 5,
            },
            0,
        );
        state.apply(route(5, "c", 2), 0);
        assert_eq!(seqs(&state, "c"), [(5, false)]);
        assert_eq!(state.next_epoch, 3);
    }

    /// The records of a snapshot of a picture that keeps its messages.
    fn snapshot(state: &LoggedState) -> Vec<Record> {
        let mut records = Vec::new();
        let result: Result<Relocation, ()> =
            state.write_snapshot(&mut |_| Err(()), &mut |record| {
                records.push(record);
                Ok(records.len() as u64)
            });
        assert!(result.is_ok(), "every message is at hand");
        records
    }

    #[test]
    fn a_picture_without_messages_reads_them_back_and_points_into_the_new_journal() {
        let mut state = LoggedState::default();
        state.apply(session("c", 1, true), 0);
        let (first, second) = (route(1, "c", 1), route(2, "c", 1));
        let mut journal: HashMap<u64, Arc<Message>> = HashMap::new();
        for (at, record) in [(100, &first), (200, &second)] {
            if let Record::Route { message, .. } = record {
                journal.insert(at, message.clone());
            }
        }
        state.apply(first, 100);
        state.apply(second, 200);
        assert!(
            state.sessions["c"]
                .deliveries
                .values()
                .all(|d| d.message.is_none()),
            "the writer's picture holds no message bodies"
        );
        state.apply(
            Record::Done {
                session: key("c", 1),
                seq: 1,
            },
            0,
        );
        let mut read = Vec::new();
        let mut written = Vec::new();
        let result: Result<Relocation, &str> = state.write_snapshot(
            &mut |at| {
                read.push(at);
                journal.get(&at).cloned().ok_or("no such record")
            },
            &mut |record| {
                written.push(record);
                Ok(1000 + written.len() as u64)
            },
        );
        assert_eq!(read, [200], "only the live delivery's message is read");
        assert_eq!(
            state.sessions["c"].deliveries[&2].route, 200,
            "the old journal is the truth until the new one is in place"
        );
        state.relocate(result.expect("written"));
        let at = written
            .iter()
            .position(|r| matches!(r, Record::Route { .. }))
            .map(|i| 1001 + i as u64);
        assert_eq!(Some(state.sessions["c"].deliveries[&2].route), at);

        // A message that cannot be read back stops the snapshot.
        journal.clear();
        let failed = state.write_snapshot(&mut |_| Err("gone"), &mut |_| Ok(0));
        assert!(matches!(failed, Err("gone")));
    }

    #[test]
    fn a_snapshot_rebuilds_the_same_state() {
        let mut state = LoggedState::with_messages();
        state.apply(session("a", 1, true), 0);
        state.apply(session("b", 2, true), 0);
        state.apply(
            Record::Subscribed {
                session: key("a", 1),
                filter: "t".into(),
                subscription: Subscription {
                    options: mqtt::SubscriptionOptions::default(),
                    identifier: None,
                },
            },
            0,
        );
        let shared = route(1, "a", 1);
        let Record::Route { message, .. } = &shared else {
            unreachable!()
        };
        state.apply(
            Record::Route {
                message: message.clone(),
                deliveries: vec![
                    LoggedDelivery {
                        session: key("a", 1),
                        seq: 1,
                        qos: QoS::AtLeastOnce,
                        retain: false,
                        subscription_ids: vec![],
                    },
                    LoggedDelivery {
                        session: key("b", 2),
                        seq: 1,
                        qos: QoS::ExactlyOnce,
                        retain: false,
                        subscription_ids: vec![4],
                    },
                ],
                received: Some((key("b", 2), 9)),
            },
            0,
        );
        state.apply(
            Record::Released {
                session: key("b", 2),
                seq: 1,
            },
            0,
        );
        state.apply(
            Record::Retained {
                message: message.clone(),
            },
            0,
        );
        let snapshot = snapshot(&state);
        let routes = snapshot
            .iter()
            .filter(|r| matches!(r, Record::Route { .. }))
            .count();
        assert_eq!(
            routes, 1,
            "a message shared by two sessions is written once"
        );
        let mut rebuilt = LoggedState::with_messages();
        for record in snapshot {
            rebuilt.apply(record, 0);
        }
        assert_eq!(seqs(&rebuilt, "a"), [(1, false)]);
        assert_eq!(seqs(&rebuilt, "b"), [(1, true)]);
        assert!(rebuilt.sessions["b"].incoming.contains(&9));
        assert!(rebuilt.sessions["a"].subscriptions.contains_key("t"));
        assert_eq!(rebuilt.retained.len(), 1);
        assert_eq!(rebuilt.next_epoch, 3);
    }
}
