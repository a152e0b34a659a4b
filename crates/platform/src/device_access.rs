//! Who may connect to the broker and what they may do: devices by their MQTT
//! secret (SHA-256, compared in constant time, no password hashing per
//! CONNECT) within their own topic tree, the operator's admins by their
//! console password. One service; the embedded broker calls it through its
//! `Authenticator` trait, an external broker will call it over HTTP.

use std::collections::HashMap;

use store::{Scope, Store, StoreError};

use crate::accounts::{Role, new_token, sha256_hex};
use crate::identifiers::normalize_mac;
use crate::login_guard::{LoginGuard, LoginRefusal};

/// The fleet prefix of every device topic (DESIGN.md: `dwr/{model}/{device-id}/…`).
pub const TOPIC_PREFIX: &str = "dwr";

/// An authenticated MQTT client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A device, confined to `dwr/{model}/{mac}/`.
    Device {
        device_id: i64,
        organisation_id: i64,
        topic_prefix: String,
    },
    /// An operator admin (tools, the platform's own clients): everything.
    Operator { username: String },
}

/// Why a CONNECT is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// Unknown user, wrong secret or password, a console account without
    /// the right role (the same answer, so a guess learns nothing), or a
    /// throttled login.
    BadCredentials,
    /// Known, but not allowed to use MQTT.
    NotAuthorized,
    /// A device's login with a client identifier other than its device id.
    ClientIdMismatch,
    /// Too many password checks at once; try again shortly.
    Busy,
}

/// What a client presented at CONNECT, from either door (the embedded
/// broker or an external broker's HTTP hook).
#[derive(Debug, Clone, Copy)]
pub struct MqttLogin<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    /// SHA-256 (hex) of a verified client certificate.
    pub certificate_sha256: Option<&'a str>,
    pub source: std::net::IpAddr,
}

/// A freshly issued device secret: shown once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedSecret {
    pub username: String,
    pub secret: String,
    pub topic_prefix: String,
}

/// Equal in time that does not depend on where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

pub(crate) fn device_topic_prefix(topic_segment: &str, mac: &str) -> String {
    format!("{TOPIC_PREFIX}/{topic_segment}/{mac}/")
}

/// Generates a 256-bit secret for a device in `scope`; only its digest is kept.
pub async fn issue_secret(
    store: &Store,
    scope: &Scope,
    device_id: i64,
) -> Result<IssuedSecret, StoreError> {
    let secret = new_token();
    store
        .set_device_secret(scope, device_id, &sha256_hex(secret.as_bytes()))
        .await?;
    let device = store.device(scope, device_id).await?;
    let login = store
        .device_login(&device.mac)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("device {device_id}")))?;
    Ok(IssuedSecret {
        username: device.mac.clone(),
        secret,
        topic_prefix: format!(
            "{}#",
            device_topic_prefix(&login.topic_segment, &device.mac)
        ),
    })
}

/// The MQTT user name of the platform's own services (ingest, tasks).
pub const INTERNAL_USERNAME: &str = "telemark-platform";
const INTERNAL_SECRET: &str = "internal-mqtt-secret";

/// The secret the platform's own MQTT clients log in with: one per
/// database, so every `telemark serve` on it shares it.
pub async fn internal_secret(store: &Store) -> Result<String, StoreError> {
    store.platform_secret(INTERNAL_SECRET, new_token).await
}

/// Checks a CONNECT's user name and password (or client certificate). A
/// device must use its device id (its MAC) as client identifier, so one
/// device's secret cannot name, resume or take over another's session.
/// Console accounts go through `guard`, like the HTTP login.
pub async fn authenticate(
    store: &Store,
    guard: &LoginGuard,
    login: MqttLogin<'_>,
) -> Result<Principal, Denial> {
    let Some(username) = login.username else {
        return Err(Denial::NotAuthorized);
    };
    let password = login.password;
    if username == INTERNAL_USERNAME {
        let expected = internal_secret(store)
            .await
            .map_err(|_| Denial::NotAuthorized)?;
        return match password {
            Some(given) if constant_time_eq(expected.as_bytes(), given) => {
                Ok(Principal::Operator {
                    username: INTERNAL_USERNAME.to_owned(),
                })
            }
            _ => Err(Denial::BadCredentials),
        };
    }
    if let Ok(mac) = normalize_mac(username) {
        let login_row = store
            .device_login(&mac)
            .await
            .map_err(|_| Denial::NotAuthorized)?
            .ok_or(Denial::BadCredentials)?;
        let by_secret = match (&login_row.secret_sha256, password) {
            (Some(expected), Some(given)) => {
                constant_time_eq(expected.as_bytes(), sha256_hex(given).as_bytes())
            }
            _ => false,
        };
        let by_certificate = match (&login_row.certificate_sha256, login.certificate_sha256) {
            (Some(expected), Some(given)) => {
                constant_time_eq(expected.as_bytes(), given.as_bytes())
            }
            _ => false,
        };
        if !(by_secret || by_certificate) {
            return Err(Denial::BadCredentials);
        }
        if login.client_id != login_row.mac {
            tracing::warn!(
                device = %login_row.mac,
                client_id = %login.client_id,
                source = %login.source,
                "device login refused: client identifier is not the device id"
            );
            return Err(Denial::ClientIdMismatch);
        }
        return Ok(Principal::Device {
            device_id: login_row.device_id,
            organisation_id: login_row.organisation_id,
            topic_prefix: device_topic_prefix(&login_row.topic_segment, &login_row.mac),
        });
    }
    let password =
        std::str::from_utf8(password.unwrap_or_default()).map_err(|_| Denial::BadCredentials)?;
    match guard.verify(store, username, password, login.source).await {
        Ok(session) if session.role == Role::OperatorAdmin => Ok(Principal::Operator {
            username: session.user.username,
        }),
        // A right password without the role gets the wrong password's answer.
        Ok(_) => Err(Denial::BadCredentials),
        Err(LoginRefusal::Busy) => Err(Denial::Busy),
        Err(_) => Err(Denial::BadCredentials),
    }
}

/// The principal behind a user name, without a password: for an external
/// broker's authorization request about an already authenticated client.
pub async fn principal_for(store: &Store, username: &str) -> Result<Option<Principal>, StoreError> {
    // The platform's own clients (ingest, tasks, presence) behind an
    // external broker: they logged in with the internal secret.
    if username == INTERNAL_USERNAME {
        return Ok(Some(Principal::Operator {
            username: INTERNAL_USERNAME.to_owned(),
        }));
    }
    if let Ok(mac) = normalize_mac(username) {
        return Ok(store
            .device_login(&mac)
            .await?
            .map(|login| Principal::Device {
                device_id: login.device_id,
                organisation_id: login.organisation_id,
                topic_prefix: device_topic_prefix(&login.topic_segment, &login.mac),
            }));
    }
    Ok(store
        .user_by_username(username)
        .await?
        .filter(|u| !u.disabled && Role::parse(&u.role) == Some(Role::OperatorAdmin))
        .map(|u| Principal::Operator {
            username: u.username,
        }))
}

/// Who a broker's user name is, remembered for [`PrincipalCache::TTL`]: an
/// external broker asks for every publish and subscribe it has not cached,
/// and a fleet reconnecting asks thousands of times a second. A device
/// deleted or an account disabled is still let through for at most that
/// long (its connection was already open).
#[derive(Debug, Default)]
pub struct PrincipalCache {
    entries: std::sync::Mutex<HashMap<String, (Option<Principal>, std::time::Instant)>>,
}

impl PrincipalCache {
    pub const TTL: std::time::Duration = std::time::Duration::from_secs(60);
    /// Past this many names the expired ones go, and if none had, all.
    const CAPACITY: usize = 200_000;

    pub async fn principal(
        &self,
        store: &Store,
        username: &str,
    ) -> Result<Option<Principal>, StoreError> {
        let fresh = |at: &std::time::Instant| at.elapsed() < Self::TTL;
        if let Some((principal, _)) = self
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(username)
            .filter(|(_, at)| fresh(at))
        {
            return Ok(principal.clone());
        }
        let principal = principal_for(store, username).await?;
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= Self::CAPACITY {
            entries.retain(|_, (_, at)| fresh(at));
            if entries.len() >= Self::CAPACITY {
                entries.clear();
            }
        }
        entries.insert(
            username.to_owned(),
            (principal.clone(), std::time::Instant::now()),
        );
        Ok(principal)
    }
}

/// A device publishes only below its own prefix; the operator anywhere
/// (but `$SYS`, which the broker keeps to itself).
pub fn may_publish(principal: &Principal, topic: &str) -> bool {
    match principal {
        Principal::Device { topic_prefix, .. } => topic.starts_with(topic_prefix.as_str()),
        Principal::Operator { .. } => true,
    }
}

/// A device subscribes only to filters inside its own prefix (a filter that
/// starts with the wildcard-free prefix cannot reach outside it).
pub fn may_subscribe(principal: &Principal, filter: &str) -> bool {
    match principal {
        Principal::Device { topic_prefix, .. } => filter.starts_with(topic_prefix.as_str()),
        Principal::Operator { .. } => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_stay_in_their_own_tree() {
        let device = Principal::Device {
            device_id: 1,
            organisation_id: 1,
            topic_prefix: device_topic_prefix("311-a1", "00-11-22-33-44-55"),
        };
        assert!(may_publish(
            &device,
            "dwr/311-a1/00-11-22-33-44-55/hardware/memory"
        ));
        assert!(!may_publish(
            &device,
            "dwr/311-a1/00-11-22-33-44-56/hardware/memory"
        ));
        assert!(!may_publish(&device, "dwr/311-a1/00-11-22-33-44-55"));
        assert!(may_subscribe(
            &device,
            "dwr/311-a1/00-11-22-33-44-55/tasks/#"
        ));
        assert!(!may_subscribe(&device, "dwr/311-a1/+/tasks/#"));
        assert!(!may_subscribe(&device, "dwr/#"));
        assert!(!may_subscribe(&device, "#"));
        assert!(
            constant_time_eq(b"abc", b"abc")
                && !constant_time_eq(b"abc", b"abd")
                && !constant_time_eq(b"a", b"ab")
        );
    }
}
