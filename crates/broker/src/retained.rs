//! Retained messages by topic level, found by topic filter [MQTT-3.3.1.3].

use std::collections::HashMap;
use std::sync::Arc;

use crate::message::Message;

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    message: Option<Arc<Message>>,
}

/// The last retained message of every topic.
#[derive(Debug, Default)]
pub struct RetainedMessages {
    root: Node,
    count: usize,
}

impl RetainedMessages {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Stores `message` as the topic's retained message, replacing the one
    /// before [MQTT-3.3.1-5]; an empty payload removes it [MQTT-3.3.1-6].
    pub fn set(&mut self, message: Arc<Message>) {
        let topic = message.topic.clone();
        if message.payload.is_empty() {
            let levels: Vec<&str> = topic.split('/').collect();
            if remove(&mut self.root, &levels) {
                self.count -= 1;
            }
            return;
        }
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        if node.message.replace(message).is_none() {
            self.count += 1;
        }
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
        let removed = purge(&mut self.root);
        self.count -= removed;
        removed
    }
}

fn remove(node: &mut Node, levels: &[&str]) -> bool {
    match levels.split_first() {
        None => node.message.take().is_some(),
        Some((level, rest)) => {
            let Some(child) = node.children.get_mut(*level) else {
                return false;
            };
            let removed = remove(child, rest);
            if child.message.is_none() && child.children.is_empty() {
                node.children.remove(*level);
            }
            removed
        }
    }
}

fn purge(node: &mut Node) -> usize {
    let mut removed = 0;
    if node.message.as_ref().is_some_and(|m| m.is_expired()) {
        node.message = None;
        removed += 1;
    }
    node.children.retain(|_, child| {
        removed += purge(child);
        child.message.is_some() || !child.children.is_empty()
    });
    removed
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
        r.set(msg("a/b", "1"));
        r.set(msg("a/b", "2"));
        r.set(msg("a", "3"));
        r.set(msg("a/c/d", "4"));
        r.set(msg("$SYS/x", "5"));
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
        r.set(msg("a/b", ""));
        assert_eq!(r.len(), 3);
        assert_eq!(topics(&r, "a/+"), Vec::<String>::new());
    }
}
