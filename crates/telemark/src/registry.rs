//! The embedded broker's door to the platform's device access service: the
//! `Authenticator` the broker calls, answered from the registry.

use std::sync::Arc;

use broker::{Action, Authenticator, BoxFuture, ClientIdentity, ConnectRequest};
use mqtt::ReasonCode;
use platform::device_access::{self, Denial, Principal};
use store::Store;

/// Queue bound of the platform's internal clients: a few seconds of a
/// 100,000-device fleet.
const INTERNAL_QUEUE: usize = 2_000_000;

pub struct RegistryAuthenticator {
    store: Store,
}

impl RegistryAuthenticator {
    pub fn new(store: Store) -> Self {
        RegistryAuthenticator { store }
    }

    fn principal(client: &ClientIdentity) -> Option<&Principal> {
        client.attributes.as_ref()?.downcast_ref::<Principal>()
    }

    fn presence(&self, client: &ClientIdentity, online: bool) {
        if let Some(principal) = Self::principal(client).cloned() {
            let store = self.store.clone();
            tokio::spawn(async move {
                if let Err(e) = device_access::set_presence(&store, &principal, online).await {
                    tracing::warn!(error = %e, "presence not recorded");
                }
            });
        }
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
                request.username.as_deref(),
                request.password.as_deref(),
                request.certificate_fingerprint.as_deref(),
            )
            .await
            .map_err(|denial| match denial {
                Denial::BadCredentials => ReasonCode::BadUserNameOrPassword,
                Denial::NotAuthorized => ReasonCode::NotAuthorized,
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
