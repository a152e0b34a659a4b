//! Topic names, topic filters and shared subscriptions [MQTT-4.7], [MQTT-4.8.2].

use crate::DecodeError;

/// Checks a topic name of a PUBLISH: no wildcard [MQTT-3.3.2-2] [MQTT-4.7.0-1].
/// Emptiness is checked by the caller, since MQTT 5 allows an empty name with a
/// topic alias.
pub fn validate_topic_name(topic: &str) -> Result<(), DecodeError> {
    if topic.bytes().any(|b| b == b'+' || b == b'#') {
        return Err(DecodeError::WildcardInTopicName(topic.to_owned()));
    }
    Ok(())
}

/// Checks a topic filter: at least one character [MQTT-4.7.3-1], `#` alone in
/// the last level [MQTT-4.7.1-2], `+` alone in its level [MQTT-4.7.1-3], and a
/// well-formed `$share/{name}/{filter}` [MQTT-4.8.2-1] [MQTT-4.8.2-2].
pub fn validate_topic_filter(filter: &str) -> Result<(), DecodeError> {
    let invalid = || DecodeError::InvalidTopicFilter(filter.to_owned());
    let plain = match SharedFilter::parse(filter) {
        Some(shared) => {
            if shared.group.is_empty()
                || shared.group.contains(['+', '#'])
                || shared.filter.is_empty()
            {
                return Err(invalid());
            }
            shared.filter
        }
        None if filter.starts_with("$share/") || filter == "$share" => return Err(invalid()),
        None => filter,
    };
    if plain.is_empty() {
        return Err(invalid());
    }
    let mut levels = plain.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        if level.contains('#') && (level != "#" || !last) {
            return Err(invalid());
        }
        if level.contains('+') && level != "+" {
            return Err(invalid());
        }
    }
    Ok(())
}

/// Whether a filter has a wildcard.
pub fn has_wildcard(filter: &str) -> bool {
    filter.contains(['+', '#'])
}

/// A `$share/{group}/{filter}` subscription [MQTT-4.8.2].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedFilter<'a> {
    pub group: &'a str,
    pub filter: &'a str,
}

impl<'a> SharedFilter<'a> {
    /// Splits a shared subscription into its group and filter; `None` for a
    /// filter that is not shared (or lacks the second `/`).
    pub fn parse(filter: &'a str) -> Option<Self> {
        let rest = filter.strip_prefix("$share/")?;
        let (group, filter) = rest.split_once('/')?;
        Some(SharedFilter { group, filter })
    }
}

/// Whether a topic name matches a (non-shared) topic filter. Topics that start
/// with `$` are not matched by a filter that starts with a wildcard
/// [MQTT-4.7.2-1].
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_follow_the_wildcard_rules() {
        for ok in [
            "#",
            "+",
            "a/#",
            "a/+/b",
            "+/+",
            "/",
            "a//b",
            "$share/g/a/#",
            "sport/tennis/#",
        ] {
            assert!(validate_topic_filter(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a#",
            "a/#/b",
            "a+",
            "a/b+/c",
            "#/a",
            "$share/g",
            "$share//a",
            "$share/g+/a",
            "$share/g/",
        ] {
            assert!(validate_topic_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn matching_follows_the_spec_examples() {
        // Examples of [MQTT-4.7.1.2] and [MQTT-4.7.1.3].
        assert!(matches("sport/tennis/player1/#", "sport/tennis/player1"));
        assert!(matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1/ranking"
        ));
        assert!(matches("sport/#", "sport"));
        assert!(matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(!matches("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(matches("sport/+", "sport/"));
        assert!(!matches("sport/+", "sport"));
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        // [MQTT-4.7.2-1]
        assert!(!matches("#", "$SYS/broker/uptime"));
        assert!(!matches("+/broker/uptime", "$SYS/broker/uptime"));
        assert!(matches("$SYS/#", "$SYS/broker/uptime"));
    }
}
