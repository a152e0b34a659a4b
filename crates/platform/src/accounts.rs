//! Users, roles, passwords and login sessions.

use sha2::{Digest, Sha256};
use store::{NewUser, OrganisationKind, Scope, Store, StoreError, User};

/// How long a console session lasts.
pub const SESSION_HOURS: i64 = 12;

/// What a user may do, within their organisation and below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    OperatorAdmin,
    IntegratorAdmin,
    CustomerAdmin,
    /// Runs tasks on devices.
    Engineer,
    /// Reads only.
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::OperatorAdmin => "operator-admin",
            Role::IntegratorAdmin => "integrator-admin",
            Role::CustomerAdmin => "customer-admin",
            Role::Engineer => "engineer",
            Role::Viewer => "viewer",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Role::OperatorAdmin,
            Role::IntegratorAdmin,
            Role::CustomerAdmin,
            Role::Engineer,
            Role::Viewer,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }

    /// Admins change things; engineers and viewers do not manage the registry.
    pub fn is_admin(self) -> bool {
        matches!(
            self,
            Role::OperatorAdmin | Role::IntegratorAdmin | Role::CustomerAdmin
        )
    }

    /// Whether a user of this role may belong to an organisation of `kind`.
    pub fn fits(self, kind: OrganisationKind) -> bool {
        match self {
            Role::Engineer | Role::Viewer => true,
            admin => Role::admin_of(kind) == admin,
        }
    }

    /// The admin role that belongs to an organisation kind.
    pub fn admin_of(kind: OrganisationKind) -> Role {
        match kind {
            OrganisationKind::Operator => Role::OperatorAdmin,
            OrganisationKind::Integrator => Role::IntegratorAdmin,
            OrganisationKind::Customer => Role::CustomerAdmin,
        }
    }
}

/// Why a login or account change did not happen.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("wrong user name or password")]
    BadCredentials,
    /// Too many password checks at once: the caller should retry shortly.
    #[error("too many logins at once; try again shortly")]
    Busy,
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// argon2id with a random salt.
pub fn hash_password(password: &str) -> Result<String, AccountError> {
    passwords::hash(password).map_err(|e| AccountError::Invalid(e.to_string()))
}

/// Verifies on the bounded argon2 pool (see the `passwords` crate).
async fn verify_password(password: &str, hash: String) -> Result<bool, AccountError> {
    passwords::verify(password, hash)
        .await
        .map_err(|_| AccountError::Busy)
}

/// Lower-case hex of bytes.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 as lower-case hex: how tokens and device secrets are stored.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// The digest a session or API token is stored as.
pub fn token_digest(token: &str) -> String {
    sha256_hex(token.as_bytes())
}

/// 256 random bits as hex.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    hex(&bytes)
}

/// A password policy an operator can live with: long enough, not the user name.
pub fn check_password(username: &str, password: &str) -> Result<(), AccountError> {
    if password.chars().count() < 10 {
        return Err(AccountError::Invalid(
            "a password needs at least 10 characters".into(),
        ));
    }
    if password.eq_ignore_ascii_case(username) {
        return Err(AccountError::Invalid(
            "the password must not be the user name".into(),
        ));
    }
    Ok(())
}

/// A logged-in user, with the scope every query of theirs runs in.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: User,
    pub role: Role,
    pub scope: Scope,
}

/// Checks a user name and password (argon2 runs even for an unknown user,
/// so timing does not tell which names exist), without opening a session.
pub async fn verify_login(
    store: &Store,
    username: &str,
    password: &str,
) -> Result<Session, AccountError> {
    // A real hash of a random password, verified for unknown users.
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let user = store.user_by_username(username).await?;
    let hash = match &user {
        Some(u) => u.password_hash.clone(),
        None => DECOY
            .get_or_init(|| hash_password(&new_token()).unwrap_or_default())
            .clone(),
    };
    let ok = verify_password(password, hash).await?;
    let user = match user {
        Some(u) if ok && !u.disabled => u,
        _ => return Err(AccountError::BadCredentials),
    };
    session_for(store, user).await
}

/// Checks the password and opens a session; returns its token.
pub async fn login(
    store: &Store,
    username: &str,
    password: &str,
) -> Result<(Session, String), AccountError> {
    let session = verify_login(store, username, password).await?;
    open_session(store, session).await
}

/// Opens a login session for a user whose password was checked; returns
/// its token.
pub async fn open_session(
    store: &Store,
    session: Session,
) -> Result<(Session, String), AccountError> {
    let token = new_token();
    let expires = store::now_millis() + SESSION_HOURS * 3600 * 1000;
    store
        .create_session(session.user.id, &token_digest(&token), expires)
        .await?;
    Ok((session, token))
}

async fn session_for(store: &Store, user: User) -> Result<Session, AccountError> {
    let role = Role::parse(&user.role)
        .ok_or_else(|| AccountError::Invalid(format!("role {:?}", user.role)))?;
    let scope = store.scope_of(user.organisation_id).await?;
    Ok(Session { user, role, scope })
}

/// The longest expiry an API token can be given (ten years).
pub const MAX_TOKEN_DAYS: u32 = 3650;

/// Long-lived API tokens start with this, so they are told from sessions.
pub const API_TOKEN_PREFIX: &str = "tmk_";

/// The session a token opens (a login session, or a long-lived API token),
/// if it is live and its user enabled.
pub async fn session(store: &Store, token: &str) -> Result<Option<Session>, AccountError> {
    let digest = token_digest(token);
    let user = if token.starts_with(API_TOKEN_PREFIX) {
        store.api_token_user(&digest).await?
    } else {
        store.session_user(&digest).await?
    };
    match user {
        Some(user) => Ok(Some(session_for(store, user).await?)),
        None => Ok(None),
    }
}

/// Creates a long-lived API token for the caller; returns it once.
/// With `expires_in_days` it stops working that many days from now.
pub async fn create_api_token(
    store: &Store,
    session: &Session,
    name: &str,
    expires_in_days: Option<u32>,
) -> Result<(store::ApiToken, String), AccountError> {
    let name = name.trim();
    if name.is_empty() || name.len() > 100 {
        return Err(AccountError::Invalid(
            "a token needs a name of 1 to 100 characters".into(),
        ));
    }
    let expires_at = match expires_in_days {
        None => None,
        Some(days @ 1..=MAX_TOKEN_DAYS) => {
            Some(store::now_millis() + i64::from(days) * 24 * 3600 * 1000)
        }
        Some(_) => {
            return Err(AccountError::Invalid(format!(
                "a token expires in 1 to {MAX_TOKEN_DAYS} days"
            )));
        }
    };
    let token = format!("{API_TOKEN_PREFIX}{}", new_token());
    let row = store
        .create_api_token(session.user.id, name, &token_digest(&token), expires_at)
        .await?;
    Ok((row, token))
}

pub async fn logout(store: &Store, token: &str) -> Result<(), AccountError> {
    Ok(store.delete_session(&token_digest(token)).await?)
}

/// On first start: the operator organisation and its `admin` user. The
/// password is `admin_password` or, when None, generated and returned so the
/// caller can print it once. None when the platform was set up before.
pub async fn bootstrap(
    store: &Store,
    admin_password: Option<&str>,
) -> Result<Option<String>, AccountError> {
    // The platform's own secrets are made (or sealed, if an earlier version
    // kept them in the clear) here, so no request ever makes one.
    ensure_platform_secrets(store).await?;
    if store.user_by_username("admin").await?.is_some() {
        return Ok(None);
    }
    let operator = match store.create_operator("Operator").await {
        Ok(o) => o,
        Err(StoreError::Conflict(_)) => {
            return Err(AccountError::Invalid(
                "an operator exists without an admin user".into(),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let password = match admin_password {
        Some(p) => {
            check_password("admin", p)?;
            p.to_owned()
        }
        None => new_token()[..20].to_owned(),
    };
    let scope = store.scope_of(operator.id).await?;
    store
        .create_user(
            &scope,
            &NewUser {
                organisation_id: operator.id,
                username: "admin".into(),
                password_hash: hash_password(&password)?,
                role: Role::OperatorAdmin.as_str().into(),
            },
        )
        .await?;
    Ok(Some(password))
}

/// The license signing key, the device CA and the internal MQTT secret,
/// made if missing.
async fn ensure_platform_secrets(store: &Store) -> Result<(), AccountError> {
    let failed = |what: &str, e: String| AccountError::Invalid(format!("{what}: {e}"));
    crate::licensing::ensure_signing_key(store)
        .await
        .map_err(|e| failed("license signing key", e.to_string()))?;
    crate::device_certificates::device_ca_pem(store)
        .await
        .map_err(|e| failed("device CA", e.to_string()))?;
    crate::device_access::internal_secret(store).await?;
    Ok(())
}

/// Creates a user in an organisation inside the creator's scope, with a role
/// that fits the organisation and a password that passes the policy.
pub async fn create_user(
    store: &Store,
    creator: &Session,
    organisation_id: i64,
    username: &str,
    password: &str,
    role: &str,
) -> Result<User, AccountError> {
    if !creator.role.is_admin() {
        return Err(AccountError::Invalid("only admins create users".into()));
    }
    let username = username.trim();
    if username.is_empty() || username.contains(char::is_whitespace) || username.len() > 64 {
        return Err(AccountError::Invalid(
            "a user name is 1 to 64 characters without spaces".into(),
        ));
    }
    if crate::identifiers::normalize_mac(username).is_ok() {
        return Err(AccountError::Invalid(
            "a user name must not look like a MAC address (device ids do)".into(),
        ));
    }
    let role =
        Role::parse(role).ok_or_else(|| AccountError::Invalid(format!("unknown role {role:?}")))?;
    let organisation = store.organisation(&creator.scope, organisation_id).await?;
    if !role.fits(organisation.kind) {
        return Err(AccountError::Invalid(format!(
            "the {} role does not belong to a {}",
            role.as_str(),
            organisation.kind.as_str()
        )));
    }
    check_password(username, password)?;
    Ok(store
        .create_user(
            &creator.scope,
            &NewUser {
                organisation_id,
                username: username.to_owned(),
                password_hash: hash_password(password)?,
                role: role.as_str().to_owned(),
            },
        )
        .await?)
}

/// Changes the caller's own password after checking the current one. Every
/// other session of the user ends and every API token is revoked; the
/// session whose token is `current_token` goes on.
pub async fn change_password(
    store: &Store,
    session: &Session,
    current_token: &str,
    current: &str,
    new: &str,
) -> Result<(), AccountError> {
    if !verify_password(current, session.user.password_hash.clone()).await? {
        return Err(AccountError::BadCredentials);
    }
    check_password(&session.user.username, new)?;
    store
        .set_password_hash(
            session.user.id,
            &hash_password(new)?,
            Some(&token_digest(current_token)),
        )
        .await?;
    Ok(())
}
