//! Login, sessions and the first-start admin against a real SQLite store.

use platform::accounts::{self, AccountError, Role};
use store::{NewUser, Store};

#[tokio::test]
async fn bootstrap_login_session_logout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_data_dir(dir.path()).await.expect("store");
    let password = accounts::bootstrap(&store, None)
        .await
        .expect("bootstrap")
        .expect("first start");
    assert!(password.len() >= 20);
    assert_eq!(
        accounts::bootstrap(&store, None).await.expect("again"),
        None,
        "only once"
    );

    assert!(matches!(
        accounts::login(&store, "admin", "wrong-password").await,
        Err(AccountError::BadCredentials)
    ));
    assert!(matches!(
        accounts::login(&store, "nobody", "whatever-123").await,
        Err(AccountError::BadCredentials)
    ));
    let (session, token) = accounts::login(&store, "admin", &password)
        .await
        .expect("login");
    assert_eq!(session.role, Role::OperatorAdmin);
    let again = accounts::session(&store, &token)
        .await
        .expect("lookup")
        .expect("live");
    assert_eq!(again.user.username, "admin");
    assert_eq!(again.scope, session.scope);
    accounts::logout(&store, &token).await.expect("logout");
    assert!(
        accounts::session(&store, &token)
            .await
            .expect("lookup")
            .is_none()
    );

    // A user of an integrator is scoped to it.
    let si = store
        .create_organisation(&session.scope, session.user.organisation_id, "Acme")
        .await
        .expect("si");
    store
        .create_user(
            &session.scope,
            &NewUser {
                organisation_id: si.id,
                username: "acme-admin".into(),
                password_hash: accounts::hash_password("acme-password-1").expect("hash"),
                role: Role::IntegratorAdmin.as_str().into(),
            },
        )
        .await
        .expect("user");
    let (acme, _) = accounts::login(&store, "acme-admin", "acme-password-1")
        .await
        .expect("login");
    assert_eq!(acme.scope.organisation_id, si.id);
    assert_eq!(
        store.organisations(&acme.scope).await.expect("list").len(),
        1
    );
}

#[tokio::test]
async fn admin_password_from_the_environment_is_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_data_dir(dir.path()).await.expect("store");
    assert!(matches!(
        accounts::bootstrap(&store, Some("short")).await,
        Err(AccountError::Invalid(_))
    ));
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_data_dir(dir.path()).await.expect("store");
    assert_eq!(
        accounts::bootstrap(&store, Some("a-long-secret"))
            .await
            .expect("ok"),
        Some("a-long-secret".into())
    );
    accounts::login(&store, "admin", "a-long-secret")
        .await
        .expect("login");
}
