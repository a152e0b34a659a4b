//! Session state that outlives a network connection [MQTT-4.1], and the store
//! that holds sessions.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, DefaultHasher};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use mqtt::{ProtocolVersion, QoS, Will};
use tokio::sync::Notify;

use crate::message::Message;
use crate::settings::QueuePolicy;
use crate::tree::Subscription;

/// Packet identifiers in use, made at the first one: most sessions of an
/// idle fleet have none, and an empty set would still cost every session
/// its 32 bytes. A fixed-key hasher: the ids are at most 65,535 small
/// numbers, nothing to flood.
#[derive(Debug, Default)]
#[allow(clippy::box_collection)] // the box is the point: 8 bytes while empty
pub struct PacketIds(Option<Box<HashSet<u16, BuildHasherDefault<DefaultHasher>>>>);

impl PacketIds {
    pub fn contains(&self, id: &u16) -> bool {
        self.0.as_ref().is_some_and(|set| set.contains(id))
    }

    /// True when `id` was not in use.
    pub fn insert(&mut self, id: u16) -> bool {
        self.0.get_or_insert_default().insert(id)
    }

    /// True when `id` was in use; the last one out frees the set.
    pub fn remove(&mut self, id: &u16) -> bool {
        let Some(set) = self.0.as_mut() else {
            return false;
        };
        let removed = set.remove(id);
        if set.is_empty() {
            self.0 = None;
        }
        removed
    }

    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |set| set.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A message on its way to one subscriber, with what its subscription decided.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: Arc<Message>,
    /// The lower of the published QoS and the subscription's [MQTT-3.8.4-8].
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
}

/// A QoS 1 or 2 delivery the client has not finished acknowledging.
#[derive(Debug, Clone)]
pub enum Inflight {
    /// PUBLISH sent; waiting for PUBACK or PUBREC.
    Publish(Delivery),
    /// PUBREC received and PUBREL sent; waiting for PUBCOMP.
    Released,
}

/// The will of the connection, kept in the session so that a delayed will
/// survives the connection [MQTT-3.1.3-9].
#[derive(Debug, Clone)]
pub struct StoredWill {
    pub will: Will,
    pub delay: Duration,
}

/// Everything a session keeps between connections.
#[derive(Debug)]
pub struct SessionState {
    pub protocol: ProtocolVersion,
    /// Full filter (with any `$share/group/`) → subscription.
    pub subscriptions: HashMap<String, Subscription>,
    /// Messages waiting to be sent, oldest first.
    pub queue: VecDeque<Delivery>,
    /// Sent and unacknowledged, in the order sent.
    pub inflight: VecDeque<(u16, Inflight)>,
    inflight_ids: PacketIds,
    /// QoS 2 packet ids received and acknowledged with PUBREC, waiting for PUBREL.
    pub incoming_qos2: PacketIds,
    next_packet_id: u16,
    /// Seconds the session outlives its connection; `u32::MAX` is never expiring.
    pub expiry_interval: u32,
    pub connected: bool,
    /// Incremented at each connection, so timers of an old one know they are stale.
    pub generation: u64,
    /// Boxed: most sessions have none, and a will is large.
    pub will: Option<Box<StoredWill>>,
    /// Messages dropped because the queue was full.
    pub dropped: u64,
    /// This session's queue bound, when its client was given its own.
    pub queue_limit: Option<usize>,
}

impl SessionState {
    fn new(protocol: ProtocolVersion) -> Self {
        SessionState {
            protocol,
            subscriptions: HashMap::new(),
            queue: VecDeque::new(),
            inflight: VecDeque::new(),
            inflight_ids: PacketIds::default(),
            incoming_qos2: PacketIds::default(),
            next_packet_id: 1,
            expiry_interval: 0,
            connected: false,
            generation: 0,
            will: None,
            dropped: 0,
            queue_limit: None,
        }
    }

    /// Adds a delivery to the queue under the limit and policy; false when a
    /// message had to be dropped.
    pub fn enqueue(&mut self, delivery: Delivery, limit: usize, policy: QueuePolicy) -> bool {
        if self.queue.len() < limit {
            self.queue.push_back(delivery);
            return true;
        }
        self.dropped += 1;
        if policy == QueuePolicy::DropOldest {
            self.queue.pop_front();
            self.queue.push_back(delivery);
        }
        false
    }

    /// A packet identifier not in use by another in-flight message [MQTT-2.2.1-2].
    pub fn allocate_packet_id(&mut self) -> Option<u16> {
        if self.inflight_ids.len() >= usize::from(u16::MAX) {
            return None;
        }
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            if self.inflight_ids.insert(id) {
                return Some(id);
            }
        }
    }

    pub fn push_inflight(&mut self, packet_id: u16, inflight: Inflight) {
        self.inflight_ids.insert(packet_id);
        self.inflight.push_back((packet_id, inflight));
    }

    /// Gives back an identifier allocated for a message that was not sent.
    pub fn release_packet_id(&mut self, packet_id: u16) {
        self.inflight_ids.remove(&packet_id);
    }

    fn position(&self, packet_id: u16) -> Option<usize> {
        // Acknowledgements come mostly in order: the front is the usual hit.
        self.inflight.iter().position(|(id, _)| *id == packet_id)
    }

    /// Ends the flow of `packet_id`, if it is in flight in the expected state.
    pub fn complete(&mut self, packet_id: u16, expect_released: bool, qos: Option<QoS>) -> bool {
        let Some(pos) = self.position(packet_id) else {
            return false;
        };
        let matches = match (&self.inflight[pos].1, expect_released) {
            (Inflight::Released, true) => true,
            (Inflight::Publish(d), false) => qos.is_none_or(|q| d.qos == q),
            _ => false,
        };
        if matches {
            self.inflight.remove(pos);
            self.inflight_ids.remove(&packet_id);
        }
        matches
    }

    /// PUBREC received: the message is the client's now; remember only the id
    /// until PUBCOMP [MQTT-4.3.3-5]. Returns false for an unknown id.
    pub fn release(&mut self, packet_id: u16) -> bool {
        match self.position(packet_id) {
            Some(pos) => match &self.inflight[pos].1 {
                Inflight::Publish(d) if d.qos == QoS::ExactlyOnce => {
                    self.inflight[pos].1 = Inflight::Released;
                    true
                }
                Inflight::Released => true,
                Inflight::Publish(_) => false,
            },
            None => false,
        }
    }

    /// Whether its connection has something to do: messages to send, or a
    /// newer connection (generation) that took the session over.
    pub fn has_work(&self, generation: u64) -> bool {
        !self.queue.is_empty() || self.generation != generation
    }

    /// Makes the session new again, as Clean Start asks [MQTT-3.1.2-4].
    pub fn reset(&mut self, protocol: ProtocolVersion) -> HashMap<String, Subscription> {
        let generation = self.generation;
        let old = std::mem::replace(self, SessionState::new(protocol));
        self.generation = generation;
        old.subscriptions
    }
}

/// A session: its identity, its state, and a wake-up for its connection.
#[derive(Debug)]
pub struct Session {
    pub client_id: Arc<str>,
    state: Mutex<SessionState>,
    /// Signalled when messages are queued for the connection to send.
    pub wake: Notify,
    /// The hibernation token of its connection while that sleeps; 0 otherwise.
    pub(crate) hibernated: AtomicU64,
}

impl Session {
    pub fn new(client_id: Arc<str>, protocol: ProtocolVersion) -> Self {
        Session {
            client_id,
            state: Mutex::new(SessionState::new(protocol)),
            wake: Notify::new(),
            hibernated: AtomicU64::new(0),
        }
    }

    /// The state, even if a thread panicked while holding it (the state is
    /// plain data and stays consistent between statements).
    pub fn lock(&self) -> MutexGuard<'_, SessionState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Where sessions live between connections. This issue keeps them in memory;
/// a durable store implements the same calls.
pub trait SessionStore: Send + Sync + 'static {
    fn get(&self, client_id: &str) -> Option<Arc<Session>>;
    fn insert(&self, session: Arc<Session>);
    /// Removes the session if it is still `session` (not a newer one).
    fn remove(&self, session: &Arc<Session>) -> bool;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn all(&self) -> Vec<Arc<Session>>;
}

/// Sessions in a hash map.
#[derive(Debug, Default)]
pub struct MemorySessionStore {
    sessions: Mutex<HashMap<Arc<str>, Arc<Session>>>,
}

impl MemorySessionStore {
    fn map(&self) -> MutexGuard<'_, HashMap<Arc<str>, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl SessionStore for MemorySessionStore {
    fn get(&self, client_id: &str) -> Option<Arc<Session>> {
        self.map().get(client_id).cloned()
    }

    fn insert(&self, session: Arc<Session>) {
        self.map().insert(session.client_id.clone(), session);
    }

    fn remove(&self, session: &Arc<Session>) -> bool {
        let mut map = self.map();
        match map.get(&session.client_id) {
            Some(current) if Arc::ptr_eq(current, session) => {
                map.remove(&session.client_id);
                true
            }
            _ => false,
        }
    }

    fn len(&self) -> usize {
        self.map().len()
    }

    fn all(&self) -> Vec<Arc<Session>> {
        self.map().values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn delivery(n: u8, qos: QoS) -> Delivery {
        Delivery {
            message: Arc::new(Message::new("t", Bytes::from(vec![n]), qos, false)),
            qos,
            retain: false,
            subscription_ids: vec![],
        }
    }

    #[test]
    fn full_queue_follows_its_policy() {
        let mut s = SessionState::new(ProtocolVersion::V5);
        for n in 0..3 {
            assert!(s.enqueue(delivery(n, QoS::AtMostOnce), 3, QueuePolicy::DropOldest));
        }
        assert!(!s.enqueue(delivery(3, QoS::AtMostOnce), 3, QueuePolicy::DropOldest));
        let first: Vec<u8> = s.queue.iter().map(|d| d.message.payload[0]).collect();
        assert_eq!(first, [1, 2, 3]);
        assert!(!s.enqueue(delivery(4, QoS::AtMostOnce), 3, QueuePolicy::DropNewest));
        let kept: Vec<u8> = s.queue.iter().map(|d| d.message.payload[0]).collect();
        assert_eq!(kept, [1, 2, 3]);
        assert_eq!(s.dropped, 2);
    }

    #[test]
    fn qos2_flow_and_packet_ids() {
        let mut s = SessionState::new(ProtocolVersion::V5);
        let id = s.allocate_packet_id().expect("id");
        s.push_inflight(id, Inflight::Publish(delivery(0, QoS::ExactlyOnce)));
        assert!(
            !s.complete(id, false, Some(QoS::AtLeastOnce)),
            "PUBACK does not end a QoS 2 flow"
        );
        assert!(s.release(id));
        assert!(!s.complete(id, false, None));
        assert!(s.complete(id, true, None));
        assert!(s.inflight.is_empty());
        let next = s.allocate_packet_id().expect("id");
        assert_ne!(next, 0);
    }
}
