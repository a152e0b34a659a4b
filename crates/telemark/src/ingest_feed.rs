//! The embedded broker's in-process connection to the platform's ingest
//! (DESIGN.md): a local session on `dwr/#` read straight from its queue, and
//! the way task requests go out to devices.

use std::collections::VecDeque;

use broker::session::Delivery;
use broker::{Broker, LocalSubscribeError, LocalSubscriber};
use mqtt::QoS;

/// Messages the ingest's session holds between two reads: at 100,000
/// readings/s about ten seconds of device messages.
const QUEUE_LIMIT: usize = 500_000;

pub struct EmbeddedFeed {
    subscriber: LocalSubscriber,
    batch: VecDeque<Delivery>,
}

impl EmbeddedFeed {
    /// Subscribes before the listeners open, so no device message is routed
    /// while nobody reads.
    pub fn subscribe(broker: &Broker) -> Result<Self, LocalSubscribeError> {
        let filter = format!("{}/#", device_protocol::PREFIX);
        let subscriber = broker.subscribe_local_keeping(
            "telemark-platform-ingest",
            &[(&filter, QoS::AtLeastOnce)],
            QUEUE_LIMIT,
        )?;
        Ok(EmbeddedFeed {
            subscriber,
            batch: VecDeque::new(),
        })
    }
}

/// The broker's receipts for one batch: the devices' PUBACKs go once the
/// batch is written; dropped unwritten, their connections end unacknowledged
/// and they send again.
struct BatchReceipts(Vec<broker::Receipt>);

impl platform::telemetry::Acknowledgement for BatchReceipts {
    fn written(self: Box<Self>) {
        for receipt in self.0 {
            receipt.kept();
        }
    }
}

impl platform::telemetry::MessageFeed for EmbeddedFeed {
    async fn next_batch(&mut self) -> Option<platform::telemetry::FeedBatch> {
        self.subscriber.recv(&mut self.batch).await?;
        let mut receipts = Vec::new();
        let messages = self
            .batch
            .drain(..)
            .map(|mut d| {
                receipts.extend(d.receipt.take());
                (d.message.topic.clone(), d.message.payload.clone())
            })
            .collect();
        let ack = (!receipts.is_empty()).then(|| {
            Box::new(BatchReceipts(receipts)) as Box<dyn platform::telemetry::Acknowledgement>
        });
        Some(platform::telemetry::FeedBatch { messages, ack })
    }
}

/// A session frame the broker still holds after this long is dropped: the
/// session has ended by then (its device went away).
const SESSION_FRAME_EXPIRY_SECS: u32 = 30;

/// The platform's task requests, published into the embedded broker as the
/// process's own messages.
pub struct BrokerTaskTransport(pub Broker);

impl platform::tasks::TaskTransport for BrokerTaskTransport {
    fn send(&self, request: platform::tasks::OutgoingRequest) {
        let mut message =
            broker::Message::new(&request.topic, request.payload, QoS::AtLeastOnce, false);
        message.properties.response_topic = Some(request.response_topic);
        message.properties.correlation_data = Some(request.correlation);
        message.properties.message_expiry_interval = Some(request.expiry_secs);
        self.0.publish(message);
    }

    fn send_session(&self, topic: String, payload: bytes::Bytes) {
        let mut message = broker::Message::new(&topic, payload, QoS::AtLeastOnce, false);
        message.properties.message_expiry_interval = Some(SESSION_FRAME_EXPIRY_SECS);
        self.0.publish(message);
    }
}
