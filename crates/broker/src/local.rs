//! Subscribers inside the broker's own process (the platform's ingest on
//! the embedded broker): a session like any other, routed to by the same
//! tree and queued by the same rules, but read straight from its queue. No
//! encoding, no socket and no acknowledgement: a message taken from the
//! queue is delivered.

use std::collections::VecDeque;
use std::sync::Arc;

use mqtt::{ProtocolVersion, QoS, SubscriptionOptions};

use crate::broker::{Broker, BrokerShared, read, write};
use crate::session::{Delivery, Session};
use crate::stats::add;
use crate::tree::Subscription;

/// Why a local subscription could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LocalSubscribeError {
    #[error("invalid topic filter {filter:?}: {reason}")]
    InvalidFilter { filter: String, reason: String },
    #[error("the broker is shutting down")]
    ShuttingDown,
}

/// An in-process session with its subscriptions. Dropping it ends the
/// session and its subscriptions.
pub struct LocalSubscriber {
    shared: Arc<BrokerShared>,
    session: Arc<Session>,
    generation: u64,
}

impl std::fmt::Debug for LocalSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalSubscriber")
            .field("client_id", &self.session.client_id)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Subscribes `client_id` to `filters` from inside the process. Its queue
    /// holds up to `queue_limit` messages between two reads, under the
    /// broker's queue policy. Retained messages matching a filter are queued
    /// first, as for a new MQTT subscription [MQTT-3.3.1-9]. The client
    /// identifier is reserved while the subscriber lives: a network client
    /// naming it is refused at CONNECT (0x85), so the session cannot be
    /// resumed or taken over from a listener.
    pub fn subscribe_local(
        &self,
        client_id: &str,
        filters: &[(&str, QoS)],
        queue_limit: usize,
    ) -> Result<LocalSubscriber, LocalSubscribeError> {
        self.subscribe_local_with(client_id, filters, queue_limit, false)
    }

    /// [`Self::subscribe_local`] for a subscriber that keeps what it is
    /// given: a client's QoS 1 or 2 message routed to it is acknowledged to
    /// its publisher only once the [`Receipt`](crate::Receipt) that comes
    /// with its delivery is kept; a receipt dropped unkept (a full queue
    /// drops the delivery with it) ends the publisher's connection without
    /// the acknowledgement, so the client sends it again.
    pub fn subscribe_local_keeping(
        &self,
        client_id: &str,
        filters: &[(&str, QoS)],
        queue_limit: usize,
    ) -> Result<LocalSubscriber, LocalSubscribeError> {
        self.subscribe_local_with(client_id, filters, queue_limit, true)
    }

    fn subscribe_local_with(
        &self,
        client_id: &str,
        filters: &[(&str, QoS)],
        queue_limit: usize,
        keeps_messages: bool,
    ) -> Result<LocalSubscriber, LocalSubscribeError> {
        let shared = &self.shared;
        if shared.is_shutting_down() {
            return Err(LocalSubscribeError::ShuttingDown);
        }
        for (filter, _) in filters {
            let inner = mqtt::topic::SharedFilter::parse(filter).map_or(*filter, |s| s.filter);
            mqtt::topic::validate_topic_filter(inner).map_err(|e| {
                LocalSubscribeError::InvalidFilter {
                    filter: (*filter).to_owned(),
                    reason: e.to_string(),
                }
            })?;
        }
        let client_id: Arc<str> = client_id.into();
        shared
            .reserved_client_ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(client_id.clone());
        let attached = shared.attach(&client_id, ProtocolVersion::V5, true, 0, None);
        let session = attached.session;
        let mut retained = Vec::new();
        for (filter, qos) in filters {
            let subscription = Subscription {
                options: SubscriptionOptions {
                    qos: *qos,
                    ..SubscriptionOptions::default()
                },
                identifier: None,
            };
            {
                let mut state = session.lock();
                state.set_queue_limit(Some(queue_limit));
                state.keeps_messages = keeps_messages;
                state
                    .subscriptions
                    .insert((*filter).to_owned(), subscription);
            }
            write(&shared.tree).subscribe(client_id.clone(), filter, subscription);
            if mqtt::topic::SharedFilter::parse(filter).is_none() {
                retained.extend(
                    read(&shared.retained)
                        .matching(filter)
                        .into_iter()
                        .filter(|m| !m.is_expired())
                        .map(|m| (m, *qos)),
                );
            }
        }
        for (message, qos) in retained {
            // [MQTT-3.3.1-8] a retained message sent for a new subscription
            // keeps its retain flag.
            shared.deliver(&session, &message, qos, true, Vec::new());
        }
        Ok(LocalSubscriber {
            shared: shared.clone(),
            session,
            generation: attached.generation,
        })
    }
}

impl LocalSubscriber {
    /// Waits for messages and moves every one queued into `into`, oldest
    /// first [MQTT-4.6.0-6]. `None` once the broker shuts down.
    pub async fn recv(&mut self, into: &mut VecDeque<Delivery>) -> Option<usize> {
        loop {
            {
                let mut state = self.session.lock();
                if state.generation != self.generation {
                    return None;
                }
                let n = state.queued();
                if n > 0 {
                    // The queue's allocation goes with the batch; the next
                    // fills the empty one handed in.
                    state.traffic_mut().queue.take_all(into);
                    drop(state);
                    add(&self.shared.stats.messages_sent, n as u64);
                    return Some(n);
                }
            }
            if self.shared.is_shutting_down() {
                return None;
            }
            // Shutdown wakes the session too.
            self.session.wake.notified().await;
        }
    }

    /// Messages dropped from this subscriber's full queue so far.
    pub fn dropped(&self) -> u64 {
        self.session.lock().dropped()
    }
}

impl Drop for LocalSubscriber {
    fn drop(&mut self) {
        // Expiry 0: detaching ends the session and takes its subscriptions
        // out of the tree.
        self.shared.detach(&self.session, self.generation, false);
        self.shared
            .reserved_client_ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.session.client_id);
    }
}
