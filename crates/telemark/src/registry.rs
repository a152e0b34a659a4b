//! The embedded broker's door to the platform's device access service: the
//! `Authenticator` the broker calls, answered from the registry.

use std::sync::Arc;

use broker::{Action, Authenticator, BoxFuture, ClientIdentity, ConnectRequest};
use mqtt::ReasonCode;
use platform::device_access::{self, Denial, MqttLogin, Principal};
use platform::login_guard::LoginGuard;
use platform::presence::PresenceRecorder;
use store::Store;

/// Queue bound of the platform's internal clients: a few seconds of a
/// 100,000-device fleet.
const INTERNAL_QUEUE: u32 = 2_000_000;

pub struct RegistryAuthenticator {
    store: Store,
    logins: Arc<LoginGuard>,
    presence: Arc<PresenceRecorder>,
}

impl RegistryAuthenticator {
    /// `logins` is the HTTP login's guard: console accounts share its
    /// throttle. Connects and disconnects go to `presence`.
    pub fn new(store: Store, logins: Arc<LoginGuard>, presence: Arc<PresenceRecorder>) -> Self {
        RegistryAuthenticator {
            store,
            logins,
            presence,
        }
    }

    fn principal(client: &ClientIdentity) -> Option<&Principal> {
        client.attributes.as_ref()?.downcast_ref::<Principal>()
    }
}

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
        if let Some(Principal::Device { device_id, .. }) = Self::principal(client) {
            self.presence.connected(*device_id);
        }
    }

    fn disconnected(&self, client: &ClientIdentity) {
        if let Some(Principal::Device { device_id, .. }) = Self::principal(client) {
            self.presence.disconnected(*device_id);
        }
    }
}
