//! Acknowledgements held for a subscriber that keeps what it is given (the
//! platform's ingest, writing device readings to its database): a client's
//! QoS 1 PUBACK or QoS 2 PUBREC for a message routed to such a subscriber
//! goes out only once that subscriber says the message is kept, so an
//! acknowledged message survives the process (DESIGN.md: acknowledged means
//! durable). A receipt dropped before it is kept — the subscriber's queue
//! was full, it stopped, it could not write — ends the publisher's
//! connection without the acknowledgement, and the client sends the message
//! again when it reconnects [MQTT-4.4.0-1].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use crate::session::Session;

/// One subscriber's promise to say whether it kept one message. Call
/// [`Receipt::kept`] once the message is durable; dropping it unkept tells
/// the publisher's connection the message was not.
#[derive(Debug)]
pub struct Receipt {
    hold: Option<Arc<AckHold>>,
}

impl Receipt {
    /// The message is kept: the publisher's acknowledgement may go once every
    /// subscriber that keeps it has said so.
    pub fn kept(mut self) {
        if let Some(hold) = self.hold.take()
            && hold.outstanding.fetch_sub(1, Ordering::AcqRel) == 1
        {
            hold.publisher.wake.notify_one();
        }
    }
}

impl Drop for Receipt {
    fn drop(&mut self) {
        if let Some(hold) = self.hold.take() {
            hold.lost.store(true, Ordering::Release);
            hold.publisher.wake.notify_one();
        }
    }
}

/// What the publisher's connection holds for one acknowledgement it has not
/// sent: how many keeping subscribers have yet to answer, and whether one
/// gave the message up.
#[derive(Debug)]
pub(crate) struct AckHold {
    outstanding: AtomicU32,
    lost: AtomicBool,
    /// Woken when the last receipt is kept or one is lost; a connection
    /// holding acknowledgements does not hibernate, so its session's
    /// wake-up reaches it.
    publisher: Arc<Session>,
}

/// Where an [`AckHold`] stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settled {
    Waiting,
    Kept,
    Lost,
}

impl AckHold {
    pub(crate) fn settled(&self) -> Settled {
        if self.lost.load(Ordering::Acquire) {
            Settled::Lost
        } else if self.outstanding.load(Ordering::Acquire) == 0 {
            Settled::Kept
        } else {
            Settled::Waiting
        }
    }
}

/// Routing one client's message: receipts are made for the keeping
/// subscribers it reaches, all bound to one hold.
pub(crate) struct Holding<'a> {
    publisher: &'a Arc<Session>,
    hold: Option<Arc<AckHold>>,
}

impl<'a> Holding<'a> {
    pub(crate) fn new(publisher: &'a Arc<Session>) -> Self {
        Holding {
            publisher,
            hold: None,
        }
    }

    pub(crate) fn receipt(&mut self) -> Receipt {
        let hold = self.hold.get_or_insert_with(|| {
            Arc::new(AckHold {
                outstanding: AtomicU32::new(0),
                lost: AtomicBool::new(false),
                publisher: self.publisher.clone(),
            })
        });
        // Counted before the receipt leaves: the subscriber may keep it
        // while routing still goes on, and the connection looks at the hold
        // only once routing is done.
        hold.outstanding.fetch_add(1, Ordering::AcqRel);
        Receipt {
            hold: Some(hold.clone()),
        }
    }

    pub(crate) fn into_hold(self) -> Option<Arc<AckHold>> {
        self.hold
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mqtt::ProtocolVersion;

    fn publisher() -> Arc<Session> {
        Arc::new(Session::new("device".into(), ProtocolVersion::V5))
    }

    #[test]
    fn a_hold_is_kept_only_when_every_receipt_is() {
        let session = publisher();
        let mut holding = Holding::new(&session);
        let first = holding.receipt();
        let second = holding.receipt();
        let hold = holding.into_hold().expect("a hold was made");
        assert_eq!(hold.settled(), Settled::Waiting);
        first.kept();
        assert_eq!(hold.settled(), Settled::Waiting);
        second.kept();
        assert_eq!(hold.settled(), Settled::Kept);
    }

    #[test]
    fn a_receipt_dropped_unkept_loses_the_message() {
        let session = publisher();
        let mut holding = Holding::new(&session);
        let first = holding.receipt();
        let second = holding.receipt();
        let hold = holding.into_hold().expect("a hold was made");
        first.kept();
        drop(second);
        assert_eq!(hold.settled(), Settled::Lost);
    }

    #[test]
    fn routing_to_no_keeping_subscriber_holds_nothing() {
        let session = publisher();
        assert!(Holding::new(&session).into_hold().is_none());
    }
}
