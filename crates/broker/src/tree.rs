//! The subscription tree: topic filters by level, matched against topic
//! names without a socket in sight [MQTT-4.7].

use std::collections::HashMap;
use std::hash::Hash;

use smallvec::SmallVec;
use std::sync::atomic::{AtomicUsize, Ordering};

use mqtt::SubscriptionOptions;
use mqtt::topic::SharedFilter;

/// What a client asked for with one topic filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscription {
    pub options: SubscriptionOptions,
    /// [MQTT-3.8.2.1.2] sent back with every message the filter matches.
    pub identifier: Option<u32>,
}

/// The members of one `$share/{group}/{filter}`: each message goes to one of
/// them [MQTT-4.8.2-3], chosen round robin.
#[derive(Debug)]
pub struct SharedGroup<K> {
    members: Vec<(K, Subscription)>,
    next: AtomicUsize,
}

impl<K: Clone + Eq> SharedGroup<K> {
    /// The next member in turn that `available` accepts, or the next in turn
    /// at all when none is (its session queues the message).
    pub fn pick(&self, available: impl Fn(&K) -> bool) -> Option<&(K, Subscription)> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.members[(start + i) % n])
            .find(|(k, _)| available(k))
            .or_else(|| self.members.get(start % n))
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

#[derive(Debug)]
struct Node<K> {
    children: HashMap<Box<str>, Node<K>>,
    subscribers: HashMap<K, Subscription>,
    shared: HashMap<Box<str>, SharedGroup<K>>,
}

impl<K> Default for Node<K> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            subscribers: HashMap::new(),
            shared: HashMap::new(),
        }
    }
}

impl<K> Node<K> {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subscribers.is_empty() && self.shared.is_empty()
    }
}

/// One match of a topic: a plain subscription, or a shared group to pick one
/// member of.
#[derive(Debug)]
pub enum Match<'a, K> {
    Single(&'a K, &'a Subscription),
    Shared(&'a SharedGroup<K>),
}

/// All subscriptions of all sessions, keyed by subscriber `K`.
#[derive(Debug)]
pub struct SubscriptionTree<K> {
    root: Node<K>,
    count: usize,
}

impl<K> Default for SubscriptionTree<K> {
    fn default() -> Self {
        SubscriptionTree {
            root: Node::default(),
            count: 0,
        }
    }
}

impl<K: Clone + Eq + Hash> SubscriptionTree<K> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of (subscriber, filter) pairs.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Adds or replaces a subscription; true when it replaced one
    /// [MQTT-3.8.4-3].
    pub fn subscribe(&mut self, subscriber: K, filter: &str, subscription: Subscription) -> bool {
        let (group, plain) = match SharedFilter::parse(filter) {
            Some(shared) => (Some(shared.group), shared.filter),
            None => (None, filter),
        };
        let mut node = &mut self.root;
        for level in plain.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        let replaced = match group {
            None => node.subscribers.insert(subscriber, subscription).is_some(),
            Some(group) => {
                let group = node
                    .shared
                    .entry(group.into())
                    .or_insert_with(|| SharedGroup {
                        members: Vec::new(),
                        next: AtomicUsize::new(0),
                    });
                match group.members.iter_mut().find(|(k, _)| *k == subscriber) {
                    Some(member) => {
                        member.1 = subscription;
                        true
                    }
                    None => {
                        group.members.push((subscriber, subscription));
                        false
                    }
                }
            }
        };
        if !replaced {
            self.count += 1;
        }
        replaced
    }

    /// Removes a subscription; true when it existed.
    pub fn unsubscribe(&mut self, subscriber: &K, filter: &str) -> bool {
        let (group, plain) = match SharedFilter::parse(filter) {
            Some(shared) => (Some(shared.group), shared.filter),
            None => (None, filter),
        };
        let levels: Vec<&str> = plain.split('/').collect();
        let removed = remove(&mut self.root, &levels, group, subscriber);
        if removed {
            self.count -= 1;
        }
        removed
    }

    /// Calls `visit` for every subscription whose filter matches `topic`.
    pub fn for_each_match<'a>(&'a self, topic: &str, mut visit: impl FnMut(Match<'a, K>)) {
        // On the stack for any topic of up to 16 levels: no allocation per
        // message routed.
        let levels: SmallVec<[&str; 16]> = topic.split('/').collect();
        // [MQTT-4.7.2-1] `$` topics are not matched by a leading wildcard.
        let dollar = topic.starts_with('$');
        walk(&self.root, &levels, 0, dollar, &mut visit);
    }
}

fn remove<K: Eq + Hash>(
    node: &mut Node<K>,
    levels: &[&str],
    group: Option<&str>,
    subscriber: &K,
) -> bool {
    match levels.split_first() {
        None => match group {
            None => node.subscribers.remove(subscriber).is_some(),
            Some(name) => {
                let Some(g) = node.shared.get_mut(name) else {
                    return false;
                };
                let before = g.members.len();
                g.members.retain(|(k, _)| k != subscriber);
                let removed = g.members.len() != before;
                if g.members.is_empty() {
                    node.shared.remove(name);
                }
                removed
            }
        },
        Some((level, rest)) => {
            let Some(child) = node.children.get_mut(*level) else {
                return false;
            };
            let removed = remove(child, rest, group, subscriber);
            if child.is_empty() {
                node.children.remove(*level);
            }
            removed
        }
    }
}

fn emit<'a, K>(node: &'a Node<K>, visit: &mut impl FnMut(Match<'a, K>)) {
    for (k, s) in &node.subscribers {
        visit(Match::Single(k, s));
    }
    for group in node.shared.values() {
        visit(Match::Shared(group));
    }
}

fn walk<'a, K>(
    node: &'a Node<K>,
    levels: &[&str],
    depth: usize,
    dollar: bool,
    visit: &mut impl FnMut(Match<'a, K>),
) {
    let wildcards_allowed = !(depth == 0 && dollar);
    if wildcards_allowed {
        // `#` matches the parent level and everything below [MQTT-4.7.1-2].
        if let Some(hash) = node.children.get("#") {
            emit(hash, visit);
        }
    }
    let Some((level, rest)) = levels.split_first() else {
        emit(node, visit);
        return;
    };
    if wildcards_allowed && let Some(plus) = node.children.get("+") {
        walk(plus, rest, depth + 1, dollar, visit);
    }
    if *level != "+"
        && *level != "#"
        && let Some(child) = node.children.get(*level)
    {
        walk(child, rest, depth + 1, dollar, visit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub() -> Subscription {
        Subscription {
            options: SubscriptionOptions::default(),
            identifier: None,
        }
    }

    fn matched(tree: &SubscriptionTree<&'static str>, topic: &str) -> Vec<&'static str> {
        let mut out = Vec::new();
        tree.for_each_match(topic, |m| match m {
            Match::Single(k, _) => out.push(*k),
            Match::Shared(g) => out.push(g.pick(|_| true).map(|(k, _)| *k).unwrap_or("?")),
        });
        out.sort();
        out
    }

    #[test]
    fn wildcards_match_as_the_spec_says() {
        let mut tree = SubscriptionTree::new();
        tree.subscribe("a", "sport/tennis/player1/#", sub());
        tree.subscribe("b", "sport/+", sub());
        tree.subscribe("c", "#", sub());
        tree.subscribe("d", "+/+", sub());
        tree.subscribe("e", "$SYS/#", sub());
        tree.subscribe("f", "sport/tennis/+", sub());
        assert_eq!(matched(&tree, "sport/tennis/player1"), ["a", "c", "f"]);
        assert_eq!(matched(&tree, "sport/tennis/player1/ranking"), ["a", "c"]);
        assert_eq!(matched(&tree, "sport"), ["c"]);
        assert_eq!(matched(&tree, "sport/"), ["b", "c", "d"]);
        assert_eq!(matched(&tree, "/finance"), ["c", "d"]);
        // [MQTT-4.7.2-1]
        assert_eq!(matched(&tree, "$SYS/broker/uptime"), ["e"]);
    }

    #[test]
    fn subscribe_replaces_and_unsubscribe_prunes() {
        let mut tree = SubscriptionTree::new();
        assert!(!tree.subscribe("a", "x/y", sub()));
        assert!(tree.subscribe("a", "x/y", sub()));
        assert_eq!(tree.len(), 1);
        assert!(tree.unsubscribe(&"a", "x/y"));
        assert!(!tree.unsubscribe(&"a", "x/y"));
        assert!(tree.is_empty());
        assert!(tree.root.is_empty());
    }

    #[test]
    fn shared_groups_take_turns() {
        let mut tree = SubscriptionTree::new();
        tree.subscribe("a", "$share/g/job/+", sub());
        tree.subscribe("b", "$share/g/job/+", sub());
        tree.subscribe("c", "job/+", sub());
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(matched(&tree, "job/1"));
        }
        let a = seen.iter().filter(|m| m.contains(&"a")).count();
        let b = seen.iter().filter(|m| m.contains(&"b")).count();
        assert_eq!((a, b), (2, 2));
        assert!(seen.iter().all(|m| m.contains(&"c") && m.len() == 2));
        assert!(tree.unsubscribe(&"a", "$share/g/job/+"));
        assert_eq!(matched(&tree, "job/1"), ["b", "c"]);
    }
}
