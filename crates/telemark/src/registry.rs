//! The embedded broker's door to the platform's device access service: the
//! `Authenticator` the broker calls, answered from the registry.

use std::collections::HashMap;
use std::sync::Arc;

use broker::{Action, Authenticator, BoxFuture, ClientIdentity, ConnectRequest};
use mqtt::ReasonCode;
use platform::device_access::{self, Denial, MqttLogin, Principal};
use platform::login_guard::LoginGuard;
use store::Store;

/// Queue bound of the platform's internal clients: a few seconds of a
/// 100,000-device fleet.
const INTERNAL_QUEUE: usize = 2_000_000;

pub struct RegistryAuthenticator {
    store: Store,
    logins: Arc<LoginGuard>,
    presence: tokio::sync::mpsc::UnboundedSender<(Principal, bool)>,
}

impl RegistryAuthenticator {
    /// Needs a tokio runtime: presence is written by a task of its own.
    /// `logins` is the HTTP login's guard: console accounts share its throttle.
    pub fn new(store: Store, logins: Arc<LoginGuard>) -> Self {
        let (presence, changes) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(record_presence(store.clone(), changes));
        RegistryAuthenticator {
            store,
            logins,
            presence,
        }
    }

    fn principal(client: &ClientIdentity) -> Option<&Principal> {
        client.attributes.as_ref()?.downcast_ref::<Principal>()
    }

    fn presence(&self, client: &ClientIdentity, online: bool) {
        if let Some(principal) = Self::principal(client).cloned() {
            // The writer lives as long as the runtime.
            let _ = self.presence.send((principal, online));
        }
    }
}

/// Writes connects and disconnects in the order the broker reported them,
/// counting each device's connections: when a device reconnects, the new
/// connection may be reported before the old one's end, and the device is
/// offline only when its last connection is gone.
async fn record_presence(
    store: Store,
    mut changes: tokio::sync::mpsc::UnboundedReceiver<(Principal, bool)>,
) {
    let mut connections: HashMap<i64, u32> = HashMap::new();
    let mut batch: Vec<(i64, bool)> = Vec::new();
    while let Some(first) = changes.recv().await {
        // Whatever queued meanwhile goes in the same transaction.
        let mut next = Some(first);
        while let Some((principal, online)) = next {
            if let Principal::Device { device_id, .. } = principal {
                let count = connections.entry(device_id).or_default();
                if online {
                    *count += 1;
                    batch.push((device_id, true));
                } else {
                    *count = count.saturating_sub(1);
                    if *count == 0 {
                        connections.remove(&device_id);
                        batch.push((device_id, false));
                    }
                }
            }
            next = if batch.len() < PRESENCE_BATCH {
                changes.try_recv().ok()
            } else {
                None
            };
        }
        if let Err(e) = store.set_devices_online(&batch).await {
            tracing::warn!(error = %e, changes = batch.len(), "presence not recorded");
        }
        batch.clear();
    }
}

/// The most connects and disconnects written in one transaction.
const PRESENCE_BATCH: usize = 5_000;

impl Authenticator for RegistryAuthenticator {
    fn authenticate<'a>(
        &'a self,
        request: &'a ConnectRequest,
    ) -> BoxFuture<'a, Result<ClientIdentity, ReasonCode>> {
        Box::pin(async move {
            let principal = device_access::authenticate(
                &self.store,
                &self.logins,
                MqttLogin {
                    client_id: &request.client_id,
                    username: request.username.as_deref(),
                    password: request.password.as_deref(),
                    certificate_sha256: request.certificate_fingerprint.as_deref(),
                    source: request.peer.ip(),
                },
            )
            .await
            .map_err(|denial| match denial {
                Denial::BadCredentials => ReasonCode::BadUserNameOrPassword,
                Denial::NotAuthorized => ReasonCode::NotAuthorized,
                // [MQTT-3.1.3-9] 3.1.1: return code 0x02, identifier rejected.
                Denial::ClientIdMismatch => ReasonCode::ClientIdentifierNotValid,
                Denial::Busy => ReasonCode::ServerBusy,
            })?;
            let mut identity = ClientIdentity::from_request(request);
            // The platform's own ingest reads every device's messages: a
            // burst of a whole fleet must queue, not drop.
            if matches!(&principal, Principal::Operator { username } if username == device_access::INTERNAL_USERNAME)
            {
                identity.max_queued_messages = Some(INTERNAL_QUEUE);
            }
            identity.attributes = Some(Arc::new(principal));
            Ok(identity)
        })
    }

    fn authorize(&self, client: &ClientIdentity, action: Action, topic: &str) -> bool {
        match Self::principal(client) {
            Some(p) => match action {
                Action::Publish => device_access::may_publish(p, topic),
                Action::Subscribe => device_access::may_subscribe(p, topic),
            },
            None => false,
        }
    }

    fn connected(&self, client: &ClientIdentity) {
        self.presence(client, true);
    }

    fn disconnected(&self, client: &ClientIdentity) {
        self.presence(client, false);
    }
}
