//! The state the journal describes, rebuilt by applying its records in
//! order: at start-up it is what the broker recovers; while running the
//! journal's writer keeps it up to date so a compaction writes it out whole
//! without asking the broker for anything.

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
    pub message: Arc<Message>,
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
}

impl LoggedState {
    fn session_mut(&mut self, key: &SessionKey) -> Option<&mut LoggedSession> {
        self.sessions
            .get_mut(&key.client)
            .filter(|s| s.epoch == key.epoch)
    }

    pub(crate) fn apply(&mut self, record: Record) {
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
                            message: message.clone(),
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

    /// Records that rebuild this state from nothing: what a compaction writes.
    /// A message queued for several sessions is written once.
    pub(crate) fn snapshot(&self) -> Vec<Record> {
        let mut records = vec![Record::Epochs {
            next: self.next_epoch,
        }];
        let mut routes: HashMap<*const Message, (Arc<Message>, Vec<LoggedDelivery>)> =
            HashMap::new();
        let mut released = Vec::new();
        for (client, s) in &self.sessions {
            let key = SessionKey {
                client: client.clone(),
                epoch: s.epoch,
            };
            records.push(Record::Session {
                session: key.clone(),
                fresh: true,
                protocol: s.protocol,
                expiry: s.expiry,
                will: s.will.clone(),
                last_seq: s.last_seq,
            });
            if let Some(at_ms) = s.detached_at_ms {
                records.push(Record::Detached {
                    session: key.clone(),
                    at_ms,
                    expiry: s.expiry,
                });
            }
            for (filter, subscription) in &s.subscriptions {
                records.push(Record::Subscribed {
                    session: key.clone(),
                    filter: filter.clone(),
                    subscription: *subscription,
                });
            }
            for packet_id in &s.incoming {
                records.push(Record::Received {
                    session: key.clone(),
                    packet_id: *packet_id,
                });
            }
            for (seq, d) in &s.deliveries {
                routes
                    .entry(Arc::as_ptr(&d.message))
                    .or_insert_with(|| (d.message.clone(), Vec::new()))
                    .1
                    .push(LoggedDelivery {
                        session: key.clone(),
                        seq: *seq,
                        qos: d.qos,
                        retain: d.retain,
                        subscription_ids: d.subscription_ids.clone(),
                    });
                if d.released {
                    released.push(Record::Released {
                        session: key.clone(),
                        seq: *seq,
                    });
                }
            }
            for (seq, only_released) in &s.early {
                records.push(if *only_released {
                    Record::Released {
                        session: key.clone(),
                        seq: *seq,
                    }
                } else {
                    Record::Done {
                        session: key.clone(),
                        seq: *seq,
                    }
                });
            }
        }
        for (_, (message, deliveries)) in routes {
            if message.is_expired() {
                continue;
            }
            records.push(Record::Route {
                message,
                deliveries,
                received: None,
            });
        }
        records.extend(released);
        for message in self.retained.values() {
            if !message.is_expired() {
                records.push(Record::Retained {
                    message: message.clone(),
                });
            }
        }
        records
    }
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
        state.apply(session("c", 1, true));
        state.apply(route(1, "c", 1));
        state.apply(route(2, "c", 1));
        state.apply(Record::Released {
            session: key("c", 1),
            seq: 2,
        });
        // Written by the subscriber's thread before the publisher's route.
        state.apply(Record::Done {
            session: key("c", 1),
            seq: 3,
        });
        state.apply(Record::Released {
            session: key("c", 1),
            seq: 4,
        });
        state.apply(route(3, "c", 1));
        state.apply(route(4, "c", 1));
        state.apply(Record::Done {
            session: key("c", 1),
            seq: 1,
        });
        assert_eq!(seqs(&state, "c"), [(2, true), (4, true)]);
        assert_eq!(state.sessions["c"].last_seq, 4);
    }

    #[test]
    fn an_old_incarnations_records_do_not_touch_a_new_one() {
        let mut state = LoggedState::default();
        state.apply(session("c", 1, true));
        state.apply(route(1, "c", 1));
        state.apply(session("c", 2, true));
        state.apply(route(2, "c", 1));
        state.apply(Record::Done {
            session: key("c", 1),
            seq: 5,
        });
        state.apply(route(5, "c", 2));
        assert_eq!(seqs(&state, "c"), [(5, false)]);
        assert_eq!(state.next_epoch, 3);
    }

    #[test]
    fn a_snapshot_rebuilds_the_same_state() {
        let mut state = LoggedState::default();
        state.apply(session("a", 1, true));
        state.apply(session("b", 2, true));
        state.apply(Record::Subscribed {
            session: key("a", 1),
            filter: "t".into(),
            subscription: Subscription {
                options: mqtt::SubscriptionOptions::default(),
                identifier: None,
            },
        });
        let shared = route(1, "a", 1);
        let Record::Route { message, .. } = &shared else {
            unreachable!()
        };
        state.apply(Record::Route {
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
        });
        state.apply(Record::Released {
            session: key("b", 2),
            seq: 1,
        });
        state.apply(Record::Retained {
            message: message.clone(),
        });
        let snapshot = state.snapshot();
        let routes = snapshot
            .iter()
            .filter(|r| matches!(r, Record::Route { .. }))
            .count();
        assert_eq!(
            routes, 1,
            "a message shared by two sessions is written once"
        );
        let mut rebuilt = LoggedState::default();
        for record in snapshot {
            rebuilt.apply(record);
        }
        assert_eq!(seqs(&rebuilt, "a"), [(1, false)]);
        assert_eq!(seqs(&rebuilt, "b"), [(1, true)]);
        assert!(rebuilt.sessions["b"].incoming.contains(&9));
        assert!(rebuilt.sessions["a"].subscriptions.contains_key("t"));
        assert_eq!(rebuilt.retained.len(), 1);
        assert_eq!(rebuilt.next_epoch, 3);
    }
}
