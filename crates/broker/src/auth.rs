//! Who may connect and what they may do: the trait the embedder implements,
//! and the file-based implementation the standalone broker ships.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use mqtt::{ProtocolVersion, ReasonCode};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a client presented in CONNECT and on the wire.
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Bytes>,
    pub peer: SocketAddr,
    /// The listener's name (`tcp`, `tls`, `ws`, `wss`).
    pub listener: &'static str,
    /// SHA-256 of the client certificate (lower-case hex), when mTLS presented one.
    pub certificate_fingerprint: Option<String>,
    pub protocol: ProtocolVersion,
}

/// Who a connection is, once authenticated. ACL decisions are asked of it.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    pub client_id: Arc<str>,
    pub username: Option<Arc<str>>,
    pub certificate_fingerprint: Option<Arc<str>>,
    /// Whatever the embedder wants to keep with the connection (a device id, a tenant).
    pub attributes: Option<Arc<dyn Any + Send + Sync>>,
    /// A deeper (or shallower) queue than `max_queued_messages` for this
    /// client: the embedder's own services read everyone's messages.
    /// A `u32`, as the session stores it: every connection carries this.
    pub max_queued_messages: Option<u32>,
}

impl ClientIdentity {
    pub fn from_request(request: &ConnectRequest) -> Self {
        ClientIdentity {
            client_id: request.client_id.as_str().into(),
            username: request.username.as_deref().map(Into::into),
            certificate_fingerprint: request.certificate_fingerprint.as_deref().map(Into::into),
            attributes: None,
            max_queued_messages: None,
        }
    }
}

/// What a client wants to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// PUBLISH to a topic name (also the will at connect).
    Publish,
    /// SUBSCRIBE to a topic filter.
    Subscribe,
}

/// One step of an enhanced authentication exchange [MQTT-4.12].
#[derive(Debug)]
pub enum AuthStep {
    /// Send AUTH 0x18 with this data and wait for the client's next AUTH.
    Continue(Option<Bytes>),
    /// Authenticated; send this data in CONNACK (or AUTH 0x00 on re-authentication).
    Success(ClientIdentity, Option<Bytes>),
    /// Refuse with this reason code.
    Failure(ReasonCode),
}

/// The state an authenticator keeps across the steps of one exchange.
#[derive(Default)]
pub struct AuthConversation {
    pub step: u32,
    pub state: Option<Box<dyn Any + Send>>,
}

impl std::fmt::Debug for AuthConversation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConversation")
            .field("step", &self.step)
            .finish()
    }
}

/// Authentication and authorization, provided by whoever embeds the broker.
/// `authenticate` runs once per CONNECT and may be slow (a database); the
/// `authorize` check runs on every PUBLISH and SUBSCRIBE and must be quick.
pub trait Authenticator: Send + Sync + 'static {
    /// Accepts or refuses a CONNECT with user name, password or certificate.
    fn authenticate<'a>(
        &'a self,
        request: &'a ConnectRequest,
    ) -> BoxFuture<'a, Result<ClientIdentity, ReasonCode>>;

    /// Whether `client` may do `action` on `topic` (a name for Publish, a filter for Subscribe).
    fn authorize(&self, client: &ClientIdentity, action: Action, topic: &str) -> bool;

    /// A client's connection was accepted (CONNACK sent). For presence.
    fn connected(&self, client: &ClientIdentity) {
        let _ = client;
    }

    /// The connection that held the client's session has ended (not called
    /// for a connection whose session was taken over by a newer one).
    fn disconnected(&self, client: &ClientIdentity) {
        let _ = client;
    }

    /// One step of enhanced authentication with `method` [MQTT-4.12]. The default
    /// knows no method.
    fn enhanced_auth<'a>(
        &'a self,
        request: &'a ConnectRequest,
        method: &'a str,
        data: Option<Bytes>,
        conversation: &'a mut AuthConversation,
    ) -> BoxFuture<'a, AuthStep> {
        let _ = (request, method, data, conversation);
        Box::pin(async { AuthStep::Failure(ReasonCode::BadAuthenticationMethod) })
    }
}

/// Lets everyone in and allows everything: development and tests.
#[derive(Debug, Default, Clone)]
pub struct AllowAll;

impl Authenticator for AllowAll {
    fn authenticate<'a>(
        &'a self,
        request: &'a ConnectRequest,
    ) -> BoxFuture<'a, Result<ClientIdentity, ReasonCode>> {
        Box::pin(async move { Ok(ClientIdentity::from_request(request)) })
    }

    fn authorize(&self, _client: &ClientIdentity, _action: Action, _topic: &str) -> bool {
        true
    }
}

/// A password or ACL file that cannot be used, with the line at fault.
#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Syntax {
        path: String,
        line: usize,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
    ReadWrite,
    Deny,
}

#[derive(Debug, Clone)]
struct AclRule {
    access: Access,
    filter: String,
    /// `pattern` rules substitute `%c` (client id) and `%u` (user name).
    pattern: bool,
    /// Which of them the filter names, found once when the file is read.
    names_client_id: bool,
    names_username: bool,
}

/// The standalone broker's access control: a password file of
/// `user:argon2-hash` lines and an ACL file in Mosquitto's syntax
/// (`user NAME`, `topic [read|write|readwrite|deny] FILTER`,
/// `pattern [read|write|readwrite|deny] FILTER` with `%c` and `%u`).
#[derive(Debug, Default)]
pub struct FileAuthenticator {
    passwords: Option<HashMap<String, String>>,
    allow_anonymous: bool,
    /// None: no ACL file, everything allowed.
    acl: Option<Acl>,
}

#[derive(Debug, Default)]
struct Acl {
    everyone: Vec<AclRule>,
    users: HashMap<String, Vec<AclRule>>,
}

fn read(path: &Path) -> Result<String, AuthFileError> {
    std::fs::read_to_string(path).map_err(|source| AuthFileError::Read {
        path: path.display().to_string(),
        source,
    })
}

impl FileAuthenticator {
    pub fn new(
        password_file: Option<&Path>,
        acl_file: Option<&Path>,
        allow_anonymous: bool,
    ) -> Result<Self, AuthFileError> {
        let passwords = match password_file {
            Some(path) => Some(parse_passwords(&read(path)?, &path.display().to_string())?),
            None => None,
        };
        let acl = match acl_file {
            Some(path) => Some(parse_acl(&read(path)?, &path.display().to_string())?),
            None => None,
        };
        Ok(FileAuthenticator {
            passwords,
            allow_anonymous,
            acl,
        })
    }
}

fn parse_passwords(text: &str, path: &str) -> Result<HashMap<String, String>, AuthFileError> {
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let syntax = |message: &str| AuthFileError::Syntax {
            path: path.to_owned(),
            line: i + 1,
            message: message.to_owned(),
        };
        let (user, hash) = line
            .split_once(':')
            .ok_or_else(|| syntax("expected user:hash"))?;
        if !passwords::is_phc(hash) {
            return Err(syntax(
                "the hash is not a PHC string (use `telemark passwd`)",
            ));
        }
        out.insert(user.to_owned(), hash.to_owned());
    }
    Ok(out)
}

fn parse_acl(text: &str, path: &str) -> Result<Acl, AuthFileError> {
    let mut acl = Acl::default();
    let mut user: Option<String> = None;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let syntax = |message: String| AuthFileError::Syntax {
            path: path.to_owned(),
            line: i + 1,
            message,
        };
        let (keyword, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let rest = rest.trim();
        match keyword {
            "user" => {
                if rest.is_empty() {
                    return Err(syntax("`user` needs a name".into()));
                }
                user = Some(rest.to_owned());
            }
            "topic" | "pattern" => {
                let (access, filter) = match rest.split_once(char::is_whitespace) {
                    Some(("read", f)) => (Access::Read, f),
                    Some(("write", f)) => (Access::Write, f),
                    Some(("readwrite", f)) => (Access::ReadWrite, f),
                    Some(("deny", f)) => (Access::Deny, f),
                    _ => (Access::ReadWrite, rest),
                };
                let filter = filter.trim();
                let check = filter.replace("%c", "c").replace("%u", "u");
                if mqtt::topic::validate_topic_filter(&check).is_err() {
                    return Err(syntax(format!("{filter:?} is not a topic filter")));
                }
                let rule = AclRule {
                    access,
                    filter: filter.to_owned(),
                    pattern: keyword == "pattern",
                    names_client_id: filter.contains("%c"),
                    names_username: filter.contains("%u"),
                };
                match (&user, rule.pattern) {
                    (Some(u), false) => acl.users.entry(u.clone()).or_default().push(rule),
                    _ => acl.everyone.push(rule),
                }
            }
            other => return Err(syntax(format!("unknown keyword {other:?}"))),
        }
    }
    Ok(acl)
}

/// Whether everything `inner` can match, `outer` matches too: the ACL test for
/// a subscription filter.
pub fn filter_covers(outer: &str, inner: &str) -> bool {
    let mut o = outer.split('/');
    let mut i = inner.split('/');
    loop {
        match (o.next(), i.next()) {
            (Some("#"), _) => return true,
            (Some(_), Some("#")) => return false,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b && b != "+" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// One topic level with no wildcard: what `%c` and `%u` may stand for.
fn is_plain_level(value: &str) -> bool {
    !value.is_empty() && !value.contains(['+', '#', '/'])
}

impl Acl {
    fn allows(&self, client: &ClientIdentity, action: Action, topic: &str) -> bool {
        let user_rules = client
            .username
            .as_deref()
            .and_then(|u| self.users.get(u))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut allowed = false;
        for rule in self.everyone.iter().chain(user_rules) {
            let filter = if rule.pattern {
                let username = client.username.as_deref().unwrap_or("");
                // A client id or user name with `+`, `#` or `/` would turn
                // the pattern into a wider filter than its author wrote
                // (the class of Mosquitto's CVE-2017-7650): such a rule
                // matches nothing for this client.
                if (rule.names_client_id && !is_plain_level(&client.client_id))
                    || (rule.names_username && !is_plain_level(username))
                {
                    continue;
                }
                rule.filter
                    .replace("%c", &client.client_id)
                    .replace("%u", username)
            } else {
                rule.filter.clone()
            };
            let hit = match action {
                Action::Publish => mqtt::topic::matches(&filter, topic),
                Action::Subscribe => filter_covers(&filter, topic),
            };
            if !hit {
                continue;
            }
            match (rule.access, action) {
                (Access::Deny, _) => return false,
                (Access::ReadWrite, _)
                | (Access::Read, Action::Subscribe)
                | (Access::Write, Action::Publish) => allowed = true,
                _ => {}
            }
        }
        allowed
    }
}

impl Authenticator for FileAuthenticator {
    fn authenticate<'a>(
        &'a self,
        request: &'a ConnectRequest,
    ) -> BoxFuture<'a, Result<ClientIdentity, ReasonCode>> {
        Box::pin(async move {
            let identity = ClientIdentity::from_request(request);
            let (Some(passwords), Some(user)) = (&self.passwords, &request.username) else {
                return if request.username.is_none() && !self.allow_anonymous {
                    Err(ReasonCode::NotAuthorized)
                } else {
                    Ok(identity)
                };
            };
            let Some(hash) = passwords.get(user).cloned() else {
                return Err(ReasonCode::BadUserNameOrPassword);
            };
            let password = request.password.clone().unwrap_or_default();
            // argon2 is deliberately slow: it runs on the bounded pool, and
            // a flood is told the server is busy.
            match passwords::verify(password.to_vec(), hash).await {
                Ok(true) => Ok(identity),
                Ok(false) => Err(ReasonCode::BadUserNameOrPassword),
                Err(passwords::Busy) => Err(ReasonCode::ServerBusy),
            }
        })
    }

    fn authorize(&self, client: &ClientIdentity, action: Action, topic: &str) -> bool {
        match &self.acl {
            None => true,
            Some(acl) => acl.allows(client, action, topic),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(client: &str, user: Option<&str>) -> ClientIdentity {
        ClientIdentity {
            client_id: client.into(),
            username: user.map(Into::into),
            certificate_fingerprint: None,
            attributes: None,
            max_queued_messages: None,
        }
    }

    #[test]
    fn acl_file_rules() {
        let acl = parse_acl(
            "# comment\ntopic read $SYS/#\npattern readwrite dwr/+/%c/#\nuser alice\ntopic write cmd/#\ntopic deny cmd/secret\n",
            "acl",
        )
        .expect("parses");
        let alice = identity("dev1", Some("alice"));
        assert!(acl.allows(&alice, Action::Subscribe, "$SYS/broker/uptime"));
        assert!(!acl.allows(&alice, Action::Publish, "$SYS/broker/uptime"));
        assert!(acl.allows(&alice, Action::Publish, "dwr/311/dev1/status"));
        assert!(!acl.allows(&alice, Action::Publish, "dwr/311/dev2/status"));
        assert!(acl.allows(&alice, Action::Publish, "cmd/reboot"));
        assert!(!acl.allows(&alice, Action::Publish, "cmd/secret"));
        assert!(!acl.allows(&identity("x", Some("bob")), Action::Publish, "cmd/reboot"));
        assert!(acl.allows(&alice, Action::Subscribe, "dwr/+/dev1/#"));
        assert!(!acl.allows(&alice, Action::Subscribe, "dwr/#"));
    }

    #[test]
    fn pattern_substitutions_never_become_wildcards() {
        let acl = parse_acl(
            "pattern readwrite dwr/+/%c/#\npattern read users/%u/#\n",
            "acl",
        )
        .expect("parses");
        for sneaky in ["#", "+", "a/b", "+/x", ""] {
            let client = identity(sneaky, Some(sneaky));
            assert!(
                !acl.allows(&client, Action::Subscribe, "dwr/+/victim/#"),
                "{sneaky:?}"
            );
            assert!(
                !acl.allows(&client, Action::Subscribe, "dwr/#"),
                "{sneaky:?}"
            );
            assert!(
                !acl.allows(&client, Action::Subscribe, "users/victim/#"),
                "{sneaky:?}"
            );
            assert!(
                !acl.allows(&client, Action::Publish, "dwr/m/victim/x"),
                "{sneaky:?}"
            );
        }
        let honest = identity("dev1", Some("alice"));
        assert!(acl.allows(&honest, Action::Subscribe, "dwr/+/dev1/#"));
        assert!(acl.allows(&honest, Action::Subscribe, "users/alice/#"));
    }

    #[test]
    fn acl_file_errors_name_the_line() {
        let err = parse_acl("topic read a/#\ntopic read a/#/b\n", "acl").expect_err("bad");
        assert!(err.to_string().starts_with("acl:2:"), "{err}");
    }

    #[test]
    fn covers() {
        assert!(filter_covers("a/#", "a/+/b"));
        assert!(filter_covers("a/+", "a/b"));
        assert!(!filter_covers("a/+", "a/#"));
        assert!(!filter_covers("a/b", "a/+"));
        assert!(filter_covers("#", "#"));
    }

    #[tokio::test]
    async fn passwords_are_checked_with_argon2() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("passwd");
        std::fs::write(
            &path,
            format!("alice:{}\n", passwords::hash("s3cret").expect("hash")),
        )
        .expect("write");
        let auth = FileAuthenticator::new(Some(&path), None, false).expect("loads");
        let mut request = ConnectRequest {
            client_id: "c".into(),
            username: Some("alice".into()),
            password: Some(Bytes::from_static(b"s3cret")),
            peer: "127.0.0.1:1".parse().expect("addr"),
            listener: "tcp",
            certificate_fingerprint: None,
            protocol: ProtocolVersion::V5,
        };
        assert!(auth.authenticate(&request).await.is_ok());
        request.password = Some(Bytes::from_static(b"wrong"));
        assert_eq!(
            auth.authenticate(&request).await.err(),
            Some(ReasonCode::BadUserNameOrPassword)
        );
        request.username = None;
        assert_eq!(
            auth.authenticate(&request).await.err(),
            Some(ReasonCode::NotAuthorized)
        );
    }
}
