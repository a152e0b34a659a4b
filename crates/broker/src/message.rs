//! An application message on its way through the broker.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use mqtt::{Properties, QoS};

/// A message as the broker routes it: one allocation shared by every
/// subscriber it goes to, the payload shared with the packet it came in.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// The properties forwarded unaltered [MQTT-3.3.2-17..20]: payload format,
    /// content type, response topic, correlation data, user properties, and
    /// the expiry interval as published.
    pub properties: Properties,
    /// The publishing client, for no local [MQTT-3.8.3-3].
    pub publisher: Option<Arc<str>>,
    pub received_at: Instant,
}

impl Message {
    pub fn new(topic: &str, payload: Bytes, qos: QoS, retain: bool) -> Self {
        Message {
            topic: topic.into(),
            payload,
            qos,
            retain,
            properties: Properties::default(),
            publisher: None,
            received_at: Instant::now(),
        }
    }

    /// Keeps only the properties a server forwards to subscribers: the topic
    /// alias is per connection [MQTT-3.3.2-7] and subscription identifiers
    /// are the subscriber's own [MQTT-3.3.4-6].
    pub fn forwardable(mut properties: Properties) -> Properties {
        properties.topic_alias = None;
        properties.subscription_identifiers.clear();
        // A will's delay is the server's business, not the subscriber's.
        properties.will_delay_interval = None;
        properties
    }

    /// The expiry interval left, in whole seconds; `Some(0)` means expired.
    pub fn remaining_expiry(&self) -> Option<u32> {
        let interval = self.properties.message_expiry_interval?;
        let elapsed = self.received_at.elapsed().as_secs();
        Some(u32::try_from(u64::from(interval).saturating_sub(elapsed)).unwrap_or(0))
    }

    /// [MQTT-3.3.2-5] an expired message is not delivered.
    pub fn is_expired(&self) -> bool {
        match self.properties.message_expiry_interval {
            Some(interval) => self.received_at.elapsed().as_secs_f64() >= f64::from(interval),
            None => false,
        }
    }
}
