//! Retained messages by topic level, found by topic filter [MQTT-3.3.1.3].

use std::collections::HashMap;
use std::sync::Arc;

use crate::message::Message;

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    message: Option<Arc<Message>>,
}

/// How many retained messages, and how large, the broker keeps: in all and
/// per publishing client. A client cannot fill the broker's memory with
/// retained messages under topics of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetainedLimits {
    pub max_messages: usize,
    /// Topic and payload bytes of every retained message together.
    pub max_bytes: usize,
    /// Retained messages whose last publisher is one client.
    pub max_per_client: usize,
}

impl Default for RetainedLimits {
    fn default() -> Self {
        RetainedLimits {
            max_messages: usize::MAX,
            max_bytes: usize::MAX,
            max_per_client: usize::MAX,
        }
    }
}

/// Why a retained message was not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RetainRefusal {
    #[error("the broker holds as many retained messages as it may")]
    Total,
    #[error("the broker holds as many retained bytes as it may")]
    Bytes,
    #[error("this client holds as many retained messages as it may")]
    PerClient,
}

fn size_of(message: &Message) -> usize {
    message.topic.len() + message.payload.len()
}

/// The last retained message of every topic.
#[derive(Debug, Default)]
pub struct RetainedMessages {
    root: Node,
    count: usize,
    bytes: usize,
    by_publisher: HashMap<Arc<str>, usize>,
    limits: RetainedLimits,
}

impl RetainedMessages {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_limits(limits: RetainedLimits) -> Self {
        RetainedMessages {
            limits,
            ..Self::default()
        }
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Topic and payload bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn forget(&mut self, old: &Message) {
        self.count -= 1;
        self.bytes -= size_of(old);
        if let Some(publisher) = &old.publisher
            && let Some(n) = self.by_publisher.get_mut(publisher)
        {
            *n -= 1;
            if *n == 0 {
                self.by_publisher.remove(publisher);
            }
        }
    }

    fn account(&mut self, new: &Message) {
        self.count += 1;
        self.bytes += size_of(new);
        if let Some(publisher) = &new.publisher {
            *self.by_publisher.entry(publisher.clone()).or_default() += 1;
        }
    }

    /// Stores `message` as the topic's retained message, replacing the one
    /// before [MQTT-3.3.1-5]; an empty payload removes it [MQTT-3.3.1-6].
    /// A message past the limits is not kept (the one before stays), and
    /// the publisher is told (MQTT 5: 0x97 Quota exceeded).
    pub fn set(&mut self, message: Arc<Message>) -> Result<(), RetainRefusal> {
        let topic = message.topic.clone();
        if message.payload.is_empty() {
            let levels: Vec<&str> = topic.split('/').collect();
            if let Some(old) = remove(&mut self.root, &levels) {
                self.forget(&old);
            }
            return Ok(());
        }
        let old = self.get(&topic).cloned();
        let (count, bytes, mine) = match &old {
            Some(old) => (
                self.count - 1,
                self.bytes - size_of(old),
                usize::from(old.publisher.is_some() && old.publisher == message.publisher),
            ),
            None => (self.count, self.bytes, 0),
        };
        if count + 1 > self.limits.max_messages {
            return Err(RetainRefusal::Total);
        }
        if bytes.saturating_add(size_of(&message)) > self.limits.max_bytes {
            return Err(RetainRefusal::Bytes);
        }
        if let Some(publisher) = &message.publisher {
            let held = self.by_publisher.get(publisher).copied().unwrap_or(0) - mine;
            if held + 1 > self.limits.max_per_client {
                return Err(RetainRefusal::PerClient);
            }
        }
        if let Some(old) = &old {
            self.forget(old);
        }
        self.account(&message);
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        node.message = Some(message);
        Ok(())
    }

    pub fn get(&self, topic: &str) -> Option<&Arc<Message>> {
        let mut node = &self.root;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        node.message.as_ref()
    }

    /// Every retained message whose topic matches `filter`.
    pub fn matching(&self, filter: &str) -> Vec<Arc<Message>> {
        let levels: Vec<&str> = filter.split('/').collect();
        let mut out = Vec::new();
        collect(&self.root, &levels, true, &mut out);
        out
    }

    /// Drops retained messages whose expiry interval has passed
    /// [MQTT-3.3.2-5]; returns how many.
    pub fn purge_expired(&mut self) -> usize {
        let mut removed = Vec::new();
        purge(&mut self.root, &mut removed);
        for old in &removed {
            self.forget(old);
        }
        removed.len()
    }
}

fn remove(node: &mut Node, levels: &[&str]) -> Option<Arc<Message>> {
    match levels.split_first() {
        None => node.message.take(),
        Some((level, rest)) => {
            let child = node.children.get_mut(*level)?;
            let removed = remove(child, rest);
            if child.message.is_none() && child.children.is_empty() {
                node.children.remove(*level);
            }
            removed
        }
    }
}

fn purge(node: &mut Node, removed: &mut Vec<Arc<Message>>) {
    if node.message.as_ref().is_some_and(|m| m.is_expired())
        && let Some(old) = node.message.take()
    {
        removed.push(old);
    }
    node.children.retain(|_, child| {
        purge(child, removed);
        child.message.is_some() || !child.children.is_empty()
    });
}

fn all_below(node: &Node, out: &mut Vec<Arc<Message>>) {
    if let Some(m) = &node.message {
        out.push(m.clone());
    }
    for child in node.children.values() {
        all_below(child, out);
    }
}

fn collect(node: &Node, levels: &[&str], root: bool, out: &mut Vec<Arc<Message>>) {
    let Some((level, rest)) = levels.split_first() else {
        if let Some(m) = &node.message {
            out.push(m.clone());
        }
        return;
    };
    // [MQTT-4.7.2-1] a leading wildcard does not reach `$` topics.
    let visible = |name: &str| !(root && name.starts_with('$'));
    match *level {
        "#" => {
            // "sport/#" also matches "sport" [MQTT-4.7.1-2].
            if !root && let Some(m) = &node.message {
                out.push(m.clone());
            }
            for (name, child) in &node.children {
                if visible(name) {
                    all_below(child, out);
                }
            }
        }
        "+" => {
            for (name, child) in &node.children {
                if visible(name) {
                    collect(child, rest, false, out);
                }
            }
        }
        literal => {
            if let Some(child) = node.children.get(literal) {
                collect(child, rest, false, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg(topic: &str, payload: &str) -> Arc<Message> {
        Arc::new(Message::new(
            topic,
            Bytes::from(payload.to_owned()),
            mqtt::QoS::AtMostOnce,
            true,
        ))
    }

    fn topics(r: &RetainedMessages, filter: &str) -> Vec<String> {
        let mut t: Vec<String> = r
            .matching(filter)
            .iter()
            .map(|m| m.topic.to_string())
            .collect();
        t.sort();
        t
    }

    #[test]
    fn set_replace_clear_and_match() {
        let mut r = RetainedMessages::new();
        for (topic, payload) in [
            ("a/b", "1"),
            ("a/b", "2"),
            ("a", "3"),
            ("a/c/d", "4"),
            ("$SYS/x", "5"),
        ] {
            r.set(msg(topic, payload)).expect("no limits");
        }
        assert_eq!(r.len(), 4);
        assert_eq!(
            &r.get("a/b").map(|m| m.payload.clone()).unwrap_or_default()[..],
            b"2"
        );
        assert_eq!(topics(&r, "#"), ["a", "a/b", "a/c/d"]);
        assert_eq!(topics(&r, "a/#"), ["a", "a/b", "a/c/d"]);
        assert_eq!(topics(&r, "a/+"), ["a/b"]);
        assert_eq!(topics(&r, "+/+/d"), ["a/c/d"]);
        assert_eq!(topics(&r, "$SYS/#"), ["$SYS/x"]);
        r.set(msg("a/b", "")).expect("clearing is always allowed");
        assert_eq!(r.len(), 3);
        assert_eq!(topics(&r, "a/+"), Vec::<String>::new());
    }

    fn from(client: &str, topic: &str, payload: &str) -> Arc<Message> {
        let mut m = Message::new(
            topic,
            Bytes::from(payload.to_owned()),
            mqtt::QoS::AtMostOnce,
            true,
        );
        m.publisher = Some(client.into());
        Arc::new(m)
    }

    #[test]
    fn limits_hold_per_client_in_count_and_in_bytes() {
        let mut r = RetainedMessages::with_limits(RetainedLimits {
            max_messages: 5,
            max_bytes: 40,
            max_per_client: 2,
        });
        r.set(from("a", "a/1", "x")).expect("first");
        r.set(from("a", "a/2", "x")).expect("second");
        assert_eq!(r.set(from("a", "a/3", "x")), Err(RetainRefusal::PerClient));
        // Replacing one's own message is not one more.
        r.set(from("a", "a/2", "y")).expect("replace");
        // Another client may replace a's message; a then holds one.
        r.set(from("b", "a/1", "z")).expect("taken over");
        r.set(from("a", "a/3", "x")).expect("room again");
        assert_eq!(
            r.set(from("c", "c/1", &"x".repeat(40))),
            Err(RetainRefusal::Bytes)
        );
        r.set(from("c", "c/1", "x")).expect("small");
        r.set(from("d", "d/1", "x")).expect("fifth");
        assert_eq!(r.set(from("e", "e/1", "x")), Err(RetainRefusal::Total));
        assert_eq!((r.len(), r.bytes()), (5, 5 * 4));
        r.set(from("a", "a/3", "")).expect("clear");
        assert_eq!((r.len(), r.bytes()), (4, 4 * 4));
        r.set(from("e", "e/1", "x")).expect("room after a clear");
    }
}
