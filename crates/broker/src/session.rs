//! Session state that outlives a network connection [MQTT-4.1], and the store
//! that holds sessions.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, DefaultHasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use mqtt::{ProtocolVersion, QoS, Will};
use tokio::sync::Notify;

use crate::message::Message;
use crate::settings::QueuePolicy;
use crate::spill::{SpillStore, SpilledTail};
use crate::tree::Subscription;

/// A fixed-key hasher for packet identifiers: at most 65,535 small
/// numbers chosen by the client or by us, nothing to flood.
type PacketIdSet = HashSet<u16, BuildHasherDefault<DefaultHasher>>;

/// A session's subscriptions: full filter (with any `$share/group/`) →
/// subscription. The map is made at the first one and freed with the last:
/// an empty map would still cost every session of an idle fleet 48 bytes.
#[derive(Debug, Default)]
#[allow(clippy::box_collection)] // the box is the point: 8 bytes while empty
pub struct Subscriptions(Option<Box<HashMap<String, Subscription>>>);

impl Subscriptions {
    pub fn contains(&self, filter: &str) -> bool {
        self.0.as_ref().is_some_and(|map| map.contains_key(filter))
    }

    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |map| map.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds or replaces the subscription to `filter`; the replaced one is returned.
    pub fn insert(&mut self, filter: String, subscription: Subscription) -> Option<Subscription> {
        self.0.get_or_insert_default().insert(filter, subscription)
    }

    pub fn remove(&mut self, filter: &str) -> Option<Subscription> {
        let map = self.0.as_mut()?;
        let removed = map.remove(filter);
        if map.is_empty() {
            self.0 = None;
        }
        removed
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Subscription)> {
        self.0
            .iter()
            .flat_map(|map| map.iter().map(|(f, s)| (f.as_str(), s)))
    }

    pub fn filters(&self) -> impl Iterator<Item = &str> {
        self.0.iter().flat_map(|map| map.keys().map(String::as_str))
    }
}

/// A message on its way to one subscriber, with what its subscription decided.
#[derive(Debug)]
pub struct Delivery {
    pub message: Arc<Message>,
    /// The lower of the published QoS and the subscription's [MQTT-3.8.4-8].
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    /// For a subscriber that keeps messages: the publisher's acknowledgement
    /// waits on it (see `receipt`).
    pub receipt: Option<crate::receipt::Receipt>,
    /// Its number in a persistent session (which gives its packet
    /// identifier, see [`packet_id_of`]); 0 when the journal does not hold it.
    pub seq: u64,
}

/// The packet identifier of a persistent session's delivery number `seq`:
/// fixed by the number, so a delivery sent before a crash goes again after
/// it with the identifier the client may already hold [MQTT-4.3.3-9]
/// without the journal writing each send.
pub fn packet_id_of(seq: u64) -> u16 {
    ((seq.saturating_sub(1) % u64::from(u16::MAX)) + 1) as u16
}

/// Bytes queued for all sessions together, against the broker's total
/// bound (`max_queued_bytes_total`). A queue charges it in steps of
/// [`QUEUE_CHARGE_STEP`] only once it holds that much, so the queues that
/// are drained as they fill (nearly all) never touch the shared counter;
/// what it misses is under one step per session.
#[derive(Debug)]
pub struct QueueBudget {
    charged: AtomicUsize,
    limit: usize,
    /// Where queues go on past the bound when the broker has a data
    /// directory; without it they stop growing and their policy applies.
    spill: Option<Arc<SpillStore>>,
}

pub const QUEUE_CHARGE_STEP: usize = 64 * 1024;

impl QueueBudget {
    pub fn new(limit: usize, spill: Option<Arc<SpillStore>>) -> Self {
        QueueBudget {
            charged: AtomicUsize::new(0),
            limit,
            spill,
        }
    }

    /// The spill directory, when queues past the bound go to disk.
    pub fn spill(&self) -> Option<&Arc<SpillStore>> {
        self.spill.as_ref()
    }

    /// The spill directory, while it has room.
    fn spill_with_room(&self) -> Option<&Arc<SpillStore>> {
        self.spill.as_ref().filter(|s| s.has_room())
    }

    /// Bytes charged by the queues that hold a step or more.
    pub fn charged(&self) -> usize {
        self.charged.load(Ordering::Relaxed)
    }

    fn exceeded(&self) -> bool {
        self.charged() >= self.limit
    }
}

/// Messages waiting to be sent, oldest first, with the bytes they hold
/// (topic and payload) so a queue is bounded in memory as well as count.
/// Past the broker's memory bound, with a data directory, the newest go to
/// disk and come back as the queue drains (`spill`).
#[derive(Debug, Default)]
pub struct DeliveryQueue {
    items: VecDeque<Delivery>,
    /// Topic and payload bytes in memory.
    bytes: usize,
    /// What this queue has charged to its budget, a multiple of the step.
    charged: usize,
    budget: Option<Arc<QueueBudget>>,
    /// Deliveries after `items`, on disk; never holds any while `items` is
    /// empty, so the front is always in memory.
    spilled: Option<Box<SpilledTail>>,
}

impl Drop for DeliveryQueue {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.charged.fetch_sub(self.charged, Ordering::Relaxed);
        }
    }
}

/// Topic and payload bytes: what queue bounds count.
pub(crate) fn delivery_size(delivery: &Delivery) -> usize {
    delivery.message.topic.len() + delivery.message.payload.len()
}

impl DeliveryQueue {
    /// Deliveries queued, in memory and on disk.
    pub fn len(&self) -> usize {
        self.items.len() + self.spilled.as_ref().map_or(0, |t| t.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Topic and payload bytes queued, in memory and on disk.
    pub fn bytes(&self) -> usize {
        self.bytes + self.spilled.as_ref().map_or(0, |t| t.bytes())
    }

    /// Deliveries on disk.
    pub fn spilled(&self) -> usize {
        self.spilled.as_ref().map_or(0, |t| t.len())
    }

    pub fn front(&self) -> Option<&Delivery> {
        self.items.front()
    }

    /// The deliveries in memory, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Delivery> {
        self.items.iter()
    }

    /// Counts this queue against the broker's bound from now on.
    pub fn use_budget(&mut self, budget: &Arc<QueueBudget>) {
        if self.budget.is_none() {
            self.budget = Some(budget.clone());
            self.settle();
        }
    }

    /// Brings the budget's charge in line with the bytes held, in whole steps.
    fn settle(&mut self) {
        if let Some(budget) = &self.budget {
            let due = self.bytes / QUEUE_CHARGE_STEP * QUEUE_CHARGE_STEP;
            if due > self.charged {
                budget
                    .charged
                    .fetch_add(due - self.charged, Ordering::Relaxed);
            } else if due < self.charged {
                budget
                    .charged
                    .fetch_sub(self.charged - due, Ordering::Relaxed);
            }
            self.charged = due;
        }
    }

    /// Where a delivery that does not fit in memory goes: this queue's
    /// spill file, when the bound is reached and the broker has one.
    fn spill_store(&self, delivery: &Delivery) -> Option<&Arc<SpillStore>> {
        let budget = self.budget.as_ref()?;
        // A receipt is a promise held in memory; it stays with the delivery.
        if delivery.receipt.is_some() || self.charged == 0 || !budget.exceeded() {
            return None;
        }
        budget.spill_with_room()
    }

    pub fn push_back(&mut self, delivery: Delivery) {
        let mut delivery = delivery;
        let store = self.spill_store(&delivery).cloned();
        if self.spilled() > 0 || store.is_some() {
            if self.spilled.is_none() {
                self.spilled = store.and_then(|s| SpilledTail::create(&s)).map(Box::new);
            }
            if let Some(tail) = self.spilled.as_mut() {
                match tail.push(delivery) {
                    Ok(()) => return,
                    Err(back) => {
                        // The file cannot take it: what it holds comes back
                        // to memory first, to keep the order.
                        delivery = back;
                        self.unspill();
                    }
                }
            }
        }
        self.bytes += delivery_size(&delivery);
        self.items.push_back(delivery);
        self.settle();
    }

    /// Brings every delivery on disk back to memory, and drops the file.
    fn unspill(&mut self) {
        if let Some(mut tail) = self.spilled.take() {
            self.bytes += tail.refill(&mut self.items, true).1;
        }
    }

    /// Keeps the front in memory: reads the oldest on disk back once
    /// memory holds none, and drops the file once it is read.
    fn refill(&mut self) {
        if !self.items.is_empty() {
            return;
        }
        if let Some(tail) = self.spilled.as_mut() {
            self.bytes += tail.refill(&mut self.items, false).1;
            if tail.is_empty() {
                self.spilled = None;
            }
        }
    }

    pub fn push_front(&mut self, delivery: Delivery) {
        self.bytes += delivery_size(&delivery);
        self.items.push_front(delivery);
        self.settle();
    }

    pub fn pop_front(&mut self) -> Option<Delivery> {
        self.refill();
        let delivery = self.items.pop_front()?;
        self.bytes -= delivery_size(&delivery);
        self.refill();
        self.settle();
        Some(delivery)
    }

    /// Keeps the deliveries `keep` says to, in memory and on disk (those
    /// copied to a new file a slice at a time).
    pub fn retain(&mut self, mut keep: impl FnMut(&Delivery) -> bool) {
        let mut bytes = 0;
        self.items.retain(|d| {
            let kept = keep(d);
            if kept {
                bytes += delivery_size(d);
            }
            kept
        });
        self.bytes = bytes;
        if let Some(mut old) = self.spilled.take() {
            let store = self.budget.as_ref().and_then(|b| b.spill.clone());
            let mut new = store.and_then(|s| SpilledTail::create(&s)).map(Box::new);
            let mut slice = VecDeque::new();
            while !old.is_empty() {
                old.refill(&mut slice, false);
                for d in slice.drain(..) {
                    if !keep(&d) {
                        continue;
                    }
                    let d = match new.as_mut() {
                        Some(tail) => match tail.push(d) {
                            Ok(()) => continue,
                            Err(d) => {
                                // Memory from here on, after what the new
                                // file took.
                                if let Some(mut tail) = new.take() {
                                    self.bytes += tail.refill(&mut self.items, true).1;
                                }
                                d
                            }
                        },
                        None => d,
                    };
                    self.bytes += delivery_size(&d);
                    self.items.push_back(d);
                }
            }
            self.spilled = new.filter(|t| !t.is_empty());
        }
        self.refill();
        self.settle();
    }

    /// Moves every queued delivery to the end of `into` (those on disk
    /// read back); when `into` is empty the queue's allocation goes with
    /// them.
    pub fn take_all(&mut self, into: &mut VecDeque<Delivery>) {
        if into.is_empty() {
            std::mem::swap(&mut self.items, into);
        } else {
            into.extend(self.items.drain(..));
        }
        if let Some(mut tail) = self.spilled.take() {
            tail.refill(into, true);
        }
        self.bytes = 0;
        self.settle();
    }
}

/// A QoS 1 or 2 delivery the client has not finished acknowledging.
#[derive(Debug)]
pub enum Inflight {
    /// PUBLISH sent; waiting for PUBACK or PUBREC.
    Publish(Delivery),
    /// PUBREC received and PUBREL sent; waiting for PUBCOMP. Holds the
    /// delivery's number in a persistent session (0 otherwise).
    Released(u64),
}

/// The will of the connection, kept in the session so that a delayed will
/// survives the connection [MQTT-3.1.3-9].
#[derive(Debug, Clone)]
pub struct StoredWill {
    pub will: Will,
    pub delay: Duration,
}

/// Messages on their way through a session: queued, in flight both ways.
/// Made at the first message and freed when the connection falls idle with
/// all of it empty (`SessionState::release_idle`): most sessions of an idle
/// fleet hold no messages, and these collections would cost each 90 bytes.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Messages waiting to be sent, oldest first.
    pub queue: DeliveryQueue,
    /// Sent and unacknowledged, in the order sent.
    pub inflight: VecDeque<(u16, Inflight)>,
    inflight_ids: PacketIdSet,
    /// QoS 2 packet ids received and acknowledged with PUBREC, waiting for PUBREL.
    pub incoming_qos2: PacketIdSet,
    /// The last packet identifier handed out (0 before the first).
    last_packet_id: u16,
}

impl Traffic {
    fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.inflight.is_empty() && self.incoming_qos2.is_empty()
    }

    /// A packet identifier not in use by another in-flight message
    /// [MQTT-2.2.1-3]; never 0 [MQTT-2.2.1-2]. Identifiers start again at 1
    /// when the traffic is freed: only the ones in flight must differ.
    pub fn allocate_packet_id(&mut self) -> Option<u16> {
        if self.inflight_ids.len() >= usize::from(u16::MAX) {
            return None;
        }
        loop {
            let id = self.last_packet_id.checked_add(1).unwrap_or(1);
            self.last_packet_id = id;
            if self.inflight_ids.insert(id) {
                return Some(id);
            }
        }
    }

    /// Takes `packet_id` for a delivery of a persistent session; false while
    /// another message in flight holds it.
    pub fn claim_packet_id(&mut self, packet_id: u16) -> bool {
        self.inflight_ids.insert(packet_id)
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

    /// Ends the flow of `packet_id`, if it is in flight in the expected
    /// state; returns the delivery's number (0 if not persistent).
    fn complete(&mut self, packet_id: u16, expect_released: bool, qos: Option<QoS>) -> Option<u64> {
        let pos = self.position(packet_id)?;
        let seq = match (&self.inflight[pos].1, expect_released) {
            (Inflight::Released(seq), true) => *seq,
            (Inflight::Publish(d), false) if qos.is_none_or(|q| d.qos == q) => d.seq,
            _ => return None,
        };
        self.inflight.remove(pos);
        self.inflight_ids.remove(&packet_id);
        Some(seq)
    }

    fn release(&mut self, packet_id: u16) -> Option<u64> {
        let pos = self.position(packet_id)?;
        match &self.inflight[pos].1 {
            Inflight::Publish(d) if d.qos == QoS::ExactlyOnce => {
                let seq = d.seq;
                self.inflight[pos].1 = Inflight::Released(seq);
                Some(seq)
            }
            Inflight::Released(seq) => Some(*seq),
            Inflight::Publish(_) => None,
        }
    }
}

/// Everything a session keeps between connections.
#[derive(Debug)]
pub struct SessionState {
    pub protocol: ProtocolVersion,
    pub connected: bool,
    pub subscriptions: Subscriptions,
    traffic: Option<Box<Traffic>>,
    /// Seconds the session outlives its connection; `u32::MAX` is never expiring.
    pub expiry_interval: u32,
    /// This session's queue bound, when its client was given its own.
    queue_limit: Option<u32>,
    /// An in-process subscriber that keeps what it is given: publishers'
    /// acknowledgements wait for its receipts.
    pub keeps_messages: bool,
    /// Incremented at each connection, so timers of an old one know they are stale.
    pub generation: u64,
    /// Boxed: most sessions have none, and a will is large.
    pub will: Option<Box<StoredWill>>,
    /// Boxed and made at the first drop or journal epoch: most sessions
    /// have neither, and every idle connection carries its session.
    tally: Option<Box<SessionTally>>,
}

/// What only some sessions count (see `SessionState::tally`).
#[derive(Debug)]
struct SessionTally {
    /// Messages dropped because the queue was full.
    dropped: u64,
    /// This incarnation's number in the journal; 0 when the session is not
    /// persistent (or persistence is off).
    epoch: u64,
    /// The number the next journaled delivery gets.
    next_seq: u64,
}

impl Default for SessionTally {
    fn default() -> Self {
        SessionTally {
            dropped: 0,
            epoch: 0,
            next_seq: 1,
        }
    }
}

impl SessionState {
    fn new(protocol: ProtocolVersion) -> Self {
        SessionState {
            protocol,
            connected: false,
            subscriptions: Subscriptions::default(),
            traffic: None,
            expiry_interval: 0,
            queue_limit: None,
            keeps_messages: false,
            generation: 0,
            will: None,
            tally: None,
        }
    }

    /// Messages dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.tally.as_ref().map_or(0, |t| t.dropped)
    }

    /// This incarnation's number in the journal; 0 when the session is not
    /// persistent (or persistence is off).
    pub fn epoch(&self) -> u64 {
        self.tally.as_ref().map_or(0, |t| t.epoch)
    }

    /// The number the next journaled delivery gets.
    pub fn next_seq(&self) -> u64 {
        self.tally.as_ref().map_or(1, |t| t.next_seq)
    }

    /// The journal's numbers for this session: its incarnation, and the
    /// number its next delivery gets.
    pub fn set_journal(&mut self, epoch: u64, next_seq: u64) {
        let tally = self.tally.get_or_insert_default();
        tally.epoch = epoch;
        tally.next_seq = next_seq;
    }

    /// Numbers a journaled delivery: the next number, then one more.
    pub fn take_seq(&mut self) -> u64 {
        let tally = self.tally.get_or_insert_default();
        let seq = tally.next_seq;
        tally.next_seq = seq + 1;
        seq
    }

    /// This session's queue bound, when its client was given its own.
    pub fn queue_limit(&self) -> Option<usize> {
        self.queue_limit.map(|limit| limit as usize)
    }

    /// Gives the session its own queue bound (beyond 4 billion is unbounded
    /// in practice, and stored as that).
    pub fn set_queue_limit(&mut self, limit: Option<usize>) {
        self.queue_limit = limit.map(|limit| u32::try_from(limit).unwrap_or(u32::MAX));
    }

    /// The session's messages, if it has any.
    pub fn traffic(&self) -> Option<&Traffic> {
        self.traffic.as_deref()
    }

    /// The session's messages, made now if it had none.
    pub fn traffic_mut(&mut self) -> &mut Traffic {
        self.traffic.get_or_insert_default()
    }

    /// Frees the message collections when nothing is queued or in flight:
    /// called when the connection falls idle or goes.
    pub fn release_idle(&mut self) {
        if self.traffic.as_ref().is_some_and(|t| t.is_empty()) {
            self.traffic = None;
        }
    }

    /// Messages waiting to be sent.
    pub fn queued(&self) -> usize {
        self.traffic.as_ref().map_or(0, |t| t.queue.len())
    }

    /// Adds a delivery to the queue under the limits (messages, and bytes
    /// when `byte_limit` is given) and the policy; returns how many messages
    /// were dropped to keep them.
    pub fn enqueue(
        &mut self,
        delivery: Delivery,
        limit: usize,
        byte_limit: Option<usize>,
        policy: QueuePolicy,
    ) -> u64 {
        self.enqueue_within(delivery, limit, byte_limit, policy, None, &mut Vec::new())
    }

    /// [`Self::enqueue`] under the broker's total bound as well: while all
    /// queues together hold more than `budget` allows, a queue that holds a
    /// step of it or more writes what comes next to disk when the broker
    /// has a data directory, and otherwise does not grow (the policy
    /// applies as if it were full at its present size); smaller queues go
    /// on. The numbers of the
    /// journaled deliveries dropped are added to `dropped_seqs`.
    pub fn enqueue_within(
        &mut self,
        delivery: Delivery,
        limit: usize,
        byte_limit: Option<usize>,
        policy: QueuePolicy,
        budget: Option<&Arc<QueueBudget>>,
        dropped_seqs: &mut Vec<u64>,
    ) -> u64 {
        let size = delivery_size(&delivery);
        let queue = &mut self.traffic_mut().queue;
        let mut byte_limit = byte_limit;
        if let Some(budget) = budget {
            if queue.budget.is_none() {
                queue.budget = Some(budget.clone());
            }
            // With room in the spill directory the queue goes on, on disk.
            if queue.charged > 0 && budget.exceeded() && budget.spill_with_room().is_none() {
                byte_limit = Some(byte_limit.map_or(queue.bytes, |max| max.min(queue.bytes)));
            }
        }
        let fits = |q: &DeliveryQueue| {
            q.len() < limit && byte_limit.is_none_or(|max| q.bytes() + size <= max)
        };
        if fits(queue) {
            queue.push_back(delivery);
            return 0;
        }
        let mut dropped = 1;
        let mut lose = |d: Delivery| {
            if d.seq != 0 {
                dropped_seqs.push(d.seq);
            }
        };
        if policy == QueuePolicy::DropOldest {
            // Room is made oldest first; a message larger than the whole
            // byte bound is the one dropped.
            dropped = 0;
            while !fits(queue) {
                let Some(oldest) = queue.pop_front() else {
                    break;
                };
                lose(oldest);
                dropped += 1;
            }
            if fits(queue) {
                queue.push_back(delivery);
            } else {
                lose(delivery);
                dropped += 1;
            }
        } else {
            lose(delivery);
        }
        if dropped > 0 {
            self.tally.get_or_insert_default().dropped += dropped;
        }
        dropped
    }

    /// Ends the flow of `packet_id`, if it is in flight in the expected
    /// state: the delivery's number in the journal (0 if not journaled).
    pub fn complete(
        &mut self,
        packet_id: u16,
        expect_released: bool,
        qos: Option<QoS>,
    ) -> Option<u64> {
        self.traffic
            .as_mut()
            .and_then(|t| t.complete(packet_id, expect_released, qos))
    }

    /// PUBREC received: the message is the client's now; remember only the id
    /// until PUBCOMP [MQTT-4.3.3-5]. `None` for an unknown id, else the
    /// delivery's number in the journal (0 if not journaled).
    pub fn release(&mut self, packet_id: u16) -> Option<u64> {
        self.traffic.as_mut().and_then(|t| t.release(packet_id))
    }

    /// PUBREL received: the QoS 2 id is free again [MQTT-4.3.3-11]. False
    /// when it was not waiting for one.
    pub fn release_incoming(&mut self, packet_id: u16) -> bool {
        self.traffic
            .as_mut()
            .is_some_and(|t| t.incoming_qos2.remove(&packet_id))
    }

    /// Whether its connection has something to do: messages to send, or a
    /// newer connection (generation) that took the session over.
    pub fn has_work(&self, generation: u64) -> bool {
        self.queued() > 0 || self.generation != generation
    }

    /// Whether its connection may hibernate: no work for it; the message
    /// collections are freed then if they are empty.
    pub fn settle_idle(&mut self, generation: u64) -> bool {
        if self.has_work(generation) {
            return false;
        }
        self.release_idle();
        true
    }

    /// Makes the session new again, as Clean Start asks [MQTT-3.1.2-4].
    pub fn reset(&mut self, protocol: ProtocolVersion) -> Subscriptions {
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
    /// The session of each of `client_ids`, in order (`None` where there
    /// is none), handed to `found`: routing asks for every target of a
    /// message, and a store behind a lock takes it once for them all.
    /// `found` must not call back into the store.
    fn get_each(
        &self,
        client_ids: &mut dyn Iterator<Item = &str>,
        found: &mut dyn FnMut(Option<Arc<Session>>),
    ) {
        for client_id in client_ids {
            found(self.get(client_id));
        }
    }
    fn insert(&self, session: Arc<Session>);
    /// Removes the session if it is still `session` (not a newer one).
    fn remove(&self, session: &Arc<Session>) -> bool;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn all(&self) -> Vec<Arc<Session>>;
}

/// A session in `MemorySessionStore`, found by its client id: the set
/// holds one pointer a session where a map from id to session would hold
/// three words.
#[derive(Debug)]
struct ById(Arc<Session>);

impl std::borrow::Borrow<str> for ById {
    fn borrow(&self) -> &str {
        &self.0.client_id
    }
}

impl std::hash::Hash for ById {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // As `str` hashes, so that lookups by `&str` find it.
        self.0.client_id.hash(state);
    }
}

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.client_id == other.0.client_id
    }
}

impl Eq for ById {}

/// Sessions in a hash set, by client id.
#[derive(Debug, Default)]
pub struct MemorySessionStore {
    sessions: Mutex<HashSet<ById>>,
}

impl MemorySessionStore {
    fn set(&self) -> MutexGuard<'_, HashSet<ById>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl SessionStore for MemorySessionStore {
    fn get(&self, client_id: &str) -> Option<Arc<Session>> {
        self.set().get(client_id).map(|s| s.0.clone())
    }

    fn get_each(
        &self,
        client_ids: &mut dyn Iterator<Item = &str>,
        found: &mut dyn FnMut(Option<Arc<Session>>),
    ) {
        let set = self.set();
        for client_id in client_ids {
            found(set.get(client_id).map(|s| s.0.clone()));
        }
    }

    fn insert(&self, session: Arc<Session>) {
        self.set().replace(ById(session));
    }

    fn remove(&self, session: &Arc<Session>) -> bool {
        let mut set = self.set();
        match set.get(&*session.client_id) {
            Some(current) if Arc::ptr_eq(&current.0, session) => {
                set.remove(&*session.client_id);
                true
            }
            _ => false,
        }
    }

    fn len(&self) -> usize {
        self.set().len()
    }

    fn all(&self) -> Vec<Arc<Session>> {
        self.set().iter().map(|s| s.0.clone()).collect()
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
            receipt: None,
            seq: 0,
        }
    }

    #[test]
    fn full_queue_follows_its_policy() {
        let mut s = SessionState::new(ProtocolVersion::V5);
        for n in 0..3 {
            assert_eq!(
                s.enqueue(
                    delivery(n, QoS::AtMostOnce),
                    3,
                    None,
                    QueuePolicy::DropOldest
                ),
                0
            );
        }
        assert_eq!(
            s.enqueue(
                delivery(3, QoS::AtMostOnce),
                3,
                None,
                QueuePolicy::DropOldest
            ),
            1
        );
        let payloads = |s: &SessionState| -> Vec<u8> {
            s.traffic()
                .map(|t| t.queue.iter().map(|d| d.message.payload[0]).collect())
                .unwrap_or_default()
        };
        let first = payloads(&s);
        assert_eq!(first, [1, 2, 3]);
        assert_eq!(
            s.enqueue(
                delivery(4, QoS::AtMostOnce),
                3,
                None,
                QueuePolicy::DropNewest
            ),
            1
        );
        let kept = payloads(&s);
        assert_eq!(kept, [1, 2, 3]);
        assert_eq!(s.dropped(), 2);
    }

    #[test]
    fn a_queue_is_bounded_in_bytes_too() {
        let mut s = SessionState::new(ProtocolVersion::V5);
        // Each test delivery is 1 payload byte on topic "t": 2 bytes.
        for n in 0..5 {
            assert_eq!(
                s.enqueue(
                    delivery(n, QoS::AtMostOnce),
                    100,
                    Some(6),
                    QueuePolicy::DropOldest
                ),
                u64::from(n >= 3)
            );
        }
        let queue = &s.traffic().expect("traffic").queue;
        assert_eq!((queue.len(), queue.bytes()), (3, 6));
        assert_eq!(queue.front().map(|d| d.message.payload[0]), Some(2));
        assert_eq!(
            s.enqueue(
                delivery(9, QoS::AtMostOnce),
                100,
                Some(6),
                QueuePolicy::DropNewest
            ),
            1
        );
        assert_eq!(s.dropped(), 3);
    }

    #[test]
    fn qos2_flow_and_packet_ids() {
        let mut s = SessionState::new(ProtocolVersion::V5);
        let id = s.traffic_mut().allocate_packet_id().expect("id");
        s.traffic_mut()
            .push_inflight(id, Inflight::Publish(delivery(0, QoS::ExactlyOnce)));
        assert!(
            s.complete(id, false, Some(QoS::AtLeastOnce)).is_none(),
            "PUBACK does not end a QoS 2 flow"
        );
        assert!(s.release(id).is_some());
        assert!(s.complete(id, false, None).is_none());
        assert!(s.complete(id, true, None).is_some());
        assert!(s.traffic().is_some_and(|t| t.inflight.is_empty()));
        let next = s.traffic_mut().allocate_packet_id().expect("id");
        assert_ne!(next, 0);
        s.traffic_mut().release_packet_id(next);
        s.release_idle();
        assert!(s.traffic().is_none(), "empty traffic is freed when idle");
    }

    #[test]
    fn traffic_is_freed_only_when_empty() {
        let mut s = SessionState::new(ProtocolVersion::V3_1_1);
        assert!(s.settle_idle(0), "nothing to do");
        assert!(s.traffic().is_none());
        s.enqueue(
            delivery(1, QoS::AtLeastOnce),
            10,
            None,
            QueuePolicy::DropNewest,
        );
        assert!(!s.settle_idle(0), "a queued message is work");
        assert!(s.has_work(0));
        let d = s.traffic_mut().queue.pop_front().expect("queued");
        let id = s.traffic_mut().allocate_packet_id().expect("id");
        s.traffic_mut().push_inflight(id, Inflight::Publish(d));
        assert!(s.settle_idle(0), "in flight is not work for the connection");
        assert!(s.traffic().is_some(), "kept while a message is in flight");
        assert!(s.complete(id, false, Some(QoS::AtLeastOnce)).is_some());
        s.traffic_mut().incoming_qos2.insert(7);
        s.release_idle();
        assert!(s.traffic().is_some(), "kept while a QoS 2 id awaits PUBREL");
        s.traffic_mut().incoming_qos2.remove(&7);
        s.release_idle();
        assert!(s.traffic().is_none());
        assert!(
            s.complete(id, false, None).is_none(),
            "no traffic, nothing to complete"
        );
        assert!(s.release(id).is_none());
    }

    #[test]
    fn subscriptions_map_goes_with_the_last() {
        let mut subs = Subscriptions::default();
        let sub = Subscription {
            options: mqtt::SubscriptionOptions::default(),
            identifier: None,
        };
        assert!(subs.insert("a/#".into(), sub).is_none());
        assert!(
            subs.insert("a/#".into(), sub).is_some(),
            "same filter replaces"
        );
        assert!(subs.insert("b".into(), sub).is_none());
        assert_eq!(subs.len(), 2);
        assert!(subs.contains("b"));
        let mut filters: Vec<&str> = subs.filters().collect();
        filters.sort();
        assert_eq!(filters, ["a/#", "b"]);
        assert!(subs.remove("a/#").is_some());
        assert!(subs.remove("a/#").is_none());
        assert!(subs.remove("b").is_some());
        assert!(subs.is_empty());
        assert!(subs.0.is_none(), "the empty map is freed");
    }

    #[test]
    fn store_finds_by_id_and_removes_only_its_own() {
        let store = MemorySessionStore::default();
        let first = Arc::new(Session::new("dev-1".into(), ProtocolVersion::V5));
        store.insert(first.clone());
        assert!(store.get("dev-1").is_some_and(|s| Arc::ptr_eq(&s, &first)));
        assert!(store.get("dev-2").is_none());
        let second = Arc::new(Session::new("dev-1".into(), ProtocolVersion::V5));
        store.insert(second.clone());
        assert_eq!(store.len(), 1, "a new session replaces the old");
        assert!(
            !store.remove(&first),
            "an old session does not remove its successor"
        );
        assert!(store.get("dev-1").is_some_and(|s| Arc::ptr_eq(&s, &second)));
        assert!(store.remove(&second));
        assert!(store.is_empty());
    }

    /// A 1 KiB delivery numbered `n` (in its payload and its seq).
    fn numbered(n: u32) -> Delivery {
        let mut payload = vec![0u8; 1024];
        payload[..4].copy_from_slice(&n.to_be_bytes());
        Delivery {
            message: Arc::new(Message::new(
                "spill/t",
                Bytes::from(payload),
                QoS::AtLeastOnce,
                false,
            )),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![7],
            receipt: None,
            seq: u64::from(n) + 1,
        }
    }

    fn number(d: &Delivery) -> u32 {
        let mut n = [0u8; 4];
        n.copy_from_slice(&d.message.payload[..4]);
        u32::from_be_bytes(n)
    }

    fn spilling_budget(dir: &std::path::Path) -> Arc<QueueBudget> {
        let store = SpillStore::open(dir.join("spill"), u64::MAX).expect("spill dir");
        Arc::new(QueueBudget::new(QUEUE_CHARGE_STEP, Some(Arc::new(store))))
    }

    #[test]
    fn past_the_memory_bound_a_queue_goes_on_on_disk_and_drains_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let budget = spilling_budget(dir.path());
        let mut queue = DeliveryQueue::default();
        queue.use_budget(&budget);
        for n in 0..2_000 {
            queue.push_back(numbered(n));
        }
        assert_eq!(queue.len(), 2_000);
        assert!(queue.spilled() > 1_800, "{} on disk", queue.spilled());
        assert!(
            queue.bytes <= 2 * QUEUE_CHARGE_STEP,
            "memory holds about one step"
        );
        let store = budget.spill().expect("store");
        assert_eq!(
            store.messages.load(Ordering::Relaxed),
            queue.spilled() as u64
        );
        let mut seen = Vec::new();
        while let Some(d) = queue.pop_front() {
            assert_eq!(d.seq, u64::from(number(&d)) + 1);
            assert_eq!(d.subscription_ids, [7]);
            seen.push(number(&d));
            assert!(
                queue.is_empty() || queue.front().is_some(),
                "the front is in memory"
            );
        }
        assert_eq!(seen, (0..2_000).collect::<Vec<_>>());
        assert_eq!(store.messages.load(Ordering::Relaxed), 0);
        assert_eq!(budget.charged(), 0);
        let files = std::fs::read_dir(dir.path().join("spill"))
            .expect("dir")
            .count();
        assert_eq!(files, 0, "a drained queue's file is gone");
    }

    #[test]
    fn retain_and_take_all_reach_the_deliveries_on_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let budget = spilling_budget(dir.path());
        let mut queue = DeliveryQueue::default();
        queue.use_budget(&budget);
        for n in 0..500 {
            queue.push_back(numbered(n));
        }
        assert!(queue.spilled() > 0);
        queue.retain(|d| number(d).is_multiple_of(2));
        assert_eq!(queue.len(), 250);
        let mut all = VecDeque::new();
        queue.take_all(&mut all);
        assert!(queue.is_empty());
        let got: Vec<u32> = all.iter().map(number).collect();
        assert_eq!(got, (0..500).step_by(2).collect::<Vec<_>>());
        drop(queue);
        assert_eq!(
            std::fs::read_dir(dir.path().join("spill"))
                .expect("dir")
                .count(),
            0
        );
    }

    /// Queues `count` numbered deliveries under `budget` (dropping the
    /// newest past it); how many were dropped.
    fn enqueue_numbered(s: &mut SessionState, budget: &Arc<QueueBudget>, count: u32) -> u64 {
        (0..count)
            .map(|n| {
                s.enqueue_within(
                    numbered(n),
                    10_000,
                    Some(usize::MAX),
                    QueuePolicy::DropNewest,
                    Some(budget),
                    &mut Vec::new(),
                )
            })
            .sum()
    }

    #[test]
    fn the_disk_bound_stops_a_queue_as_the_memory_bound_does_without_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SpillStore::open(dir.path().join("spill"), 100 * 1024).expect("spill dir");
        let budget = Arc::new(QueueBudget::new(QUEUE_CHARGE_STEP, Some(Arc::new(store))));
        let mut s = SessionState::new(ProtocolVersion::V5);
        let dropped = enqueue_numbered(&mut s, &budget, 1_000);
        let on_disk = budget
            .spill()
            .map_or(0, |s| s.bytes.load(Ordering::Relaxed));
        assert!(
            (100 * 1024..=101 * 1024 + 64).contains(&on_disk),
            "{on_disk} bytes on disk"
        );
        assert!(dropped > 800, "{dropped} dropped past both bounds");
    }

    #[test]
    fn without_a_data_directory_the_bound_stops_a_queue() {
        let budget = Arc::new(QueueBudget::new(QUEUE_CHARGE_STEP, None));
        let mut s = SessionState::new(ProtocolVersion::V5);
        let dropped = enqueue_numbered(&mut s, &budget, 500);
        assert!(dropped > 400, "{dropped} dropped");
        assert_eq!(s.traffic.as_ref().map_or(0, |t| t.queue.spilled()), 0);
    }
}
