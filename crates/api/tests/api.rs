//! The API through its router (`oneshot`), on a real SQLite store: login,
//! CSRF, tenant isolation, validation errors as problem+json, CSV import.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

struct Harness {
    app: axum::Router,
    store: store::Store,
    admin_password: String,
    _dir: tempfile::TempDir,
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store::Store::open_data_dir(dir.path())
        .await
        .expect("store");
    let admin_password = platform::accounts::bootstrap(&store, None)
        .await
        .expect("bootstrap")
        .expect("admin");
    Harness {
        app: api::app(store.clone()),
        store,
        admin_password,
        _dir: dir,
    }
}

/// Sends a request; returns status, headers and the JSON body (or Null).
async fn call(
    app: &axum::Router,
    method: Method,
    uri: &str,
    auth: &[(&str, &str)],
    body: Option<Value>,
) -> (StatusCode, axum::http::HeaderMap, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in auth {
        req = req.header(*k, *v);
    }
    let req = match body {
        Some(v) => req
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(v.to_string())),
        None => req.body(Body::empty()),
    }
    .expect("request");
    let response = app.clone().oneshot(req).await.expect("response");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, headers, json)
}

/// The DWM-311-A1 model every test fleet uses.
async fn create_model(app: &axum::Router, auth: &[(&str, &str)]) {
    let (status, _, body) = call(
        app,
        Method::POST,
        "/api/v1/device-models",
        auth,
        Some(json!({"name": "DWM-311-A1", "vendor": "D-Link", "hardware_revision": "A1", "topic_segment": "311-a1"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

async fn login(app: &axum::Router, user: &str, password: &str) -> String {
    let (status, _, body) = call(
        app,
        Method::POST,
        "/api/v1/session",
        &[],
        Some(json!({"username": user, "password": password})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["token"].as_str().expect("token").to_owned()
}

#[tokio::test]
async fn login_cookie_csrf_and_logout() {
    let h = harness().await;
    let (status, headers, body) = call(
        &h.app,
        Method::POST,
        "/api/v1/session",
        &[],
        Some(json!({"username": "admin", "password": "nope"})),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
    assert_eq!(body["status"], 401);

    let (status, headers, body) = call(
        &h.app,
        Method::POST,
        "/api/v1/session",
        &[],
        Some(json!({"username": "admin", "password": h.admin_password})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let cookie = headers[header::SET_COOKIE]
        .to_str()
        .expect("cookie")
        .to_owned();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    let cookie = cookie.split(';').next().expect("pair").to_owned();
    let csrf = body["csrf_token"].as_str().expect("csrf").to_owned();
    assert_eq!(body["role"], "operator-admin");

    let (status, _, me) = call(
        &h.app,
        Method::GET,
        "/api/v1/session",
        &[("cookie", &cookie)],
        None,
    )
    .await;
    assert_eq!(
        (status, me["username"].as_str()),
        (StatusCode::OK, Some("admin"))
    );
    // An unsafe request with the cookie but without the CSRF token is refused.
    let new_org = json!({"parent_id": me["organisation_id"], "name": "Acme"});
    let (status, _, _) = call(
        &h.app,
        Method::POST,
        "/api/v1/organisations",
        &[("cookie", &cookie)],
        Some(new_org.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, org) = call(
        &h.app,
        Method::POST,
        "/api/v1/organisations",
        &[("cookie", &cookie), ("x-csrf-token", &csrf)],
        Some(new_org),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{org}");
    assert_eq!(org["kind"], "integrator");

    let (status, _, _) = call(
        &h.app,
        Method::DELETE,
        "/api/v1/session",
        &[("cookie", &cookie), ("x-csrf-token", &csrf)],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, _) = call(
        &h.app,
        Method::GET,
        "/api/v1/session",
        &[("cookie", &cookie)],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn tenants_see_only_their_own() {
    let h = harness().await;
    let admin = format!("Bearer {}", login(&h.app, "admin", &h.admin_password).await);
    let auth = [("authorization", admin.as_str())];
    let (_, _, me) = call(&h.app, Method::GET, "/api/v1/session", &auth, None).await;
    let root = me["organisation_id"].as_i64().expect("id");
    let (_, _, acme) = call(
        &h.app,
        Method::POST,
        "/api/v1/organisations",
        &auth,
        Some(json!({"parent_id": root, "name": "Acme"})),
    )
    .await;
    let (_, _, rival) = call(
        &h.app,
        Method::POST,
        "/api/v1/organisations",
        &auth,
        Some(json!({"parent_id": root, "name": "Rival"})),
    )
    .await;
    let (status, _, _) = call(
        &h.app,
        Method::POST,
        "/api/v1/device-models",
        &auth,
        Some(json!({"name": "DWM-311-A1", "vendor": "D-Link", "hardware_revision": "A1", "topic_segment": "311-a1"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);

    // An integrator admin, made in the store directly.
    let scope = h.store.scope_of(root).await.expect("scope");
    h.store
        .create_user(
            &scope,
            &store::NewUser {
                organisation_id: acme["id"].as_i64().expect("id"),
                username: "acme".into(),
                password_hash: platform::accounts::hash_password("acme-password").expect("hash"),
                role: "integrator-admin".into(),
            },
        )
        .await
        .expect("user");
    let acme_token = format!("Bearer {}", login(&h.app, "acme", "acme-password").await);
    let acme_auth = [("authorization", acme_token.as_str())];

    // The operator imports a device for the rival.
    let (_, _, record) = call_csv(
        &h.app,
        "/api/v1/devices/import?source=rival.csv",
        &auth,
        &format!(
            "serial,mac,model,organisation\nR1,00:11:22:33:44:99,311-a1,{}\n",
            rival["id"]
        ),
    )
    .await;
    assert_eq!(record["rows_accepted"], 1, "{record}");
    let (_, _, page) = call(&h.app, Method::GET, "/api/v1/devices", &auth, None).await;
    let rival_device = page["devices"][0]["id"].as_i64().expect("device");

    // Acme sees neither the rival, nor its device, nor its import.
    let (_, _, orgs) = call(
        &h.app,
        Method::GET,
        "/api/v1/organisations",
        &acme_auth,
        None,
    )
    .await;
    assert_eq!(orgs.as_array().map(Vec::len), Some(1));
    let (status, _, problem) = call(
        &h.app,
        Method::GET,
        &format!("/api/v1/devices/{rival_device}"),
        &acme_auth,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
    let (status, _, _) = call(
        &h.app,
        Method::GET,
        &format!("/api/v1/imports/{}", record["id"]),
        &acme_auth,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, _, page) = call(&h.app, Method::GET, "/api/v1/devices", &acme_auth, None).await;
    assert_eq!(page["devices"].as_array().map(Vec::len), Some(0));
    // Nor can it create an organisation under the rival, or a device model.
    let (status, _, _) = call(
        &h.app,
        Method::POST,
        "/api/v1/organisations",
        &acme_auth,
        Some(json!({"parent_id": rival["id"], "name": "X"})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = call(
        &h.app,
        Method::POST,
        "/api/v1/device-models",
        &acme_auth,
        Some(json!({"name": "X", "vendor": "Y", "hardware_revision": "Z", "topic_segment": "x"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Statistics count only what the caller sees.
    let (_, _, stats) = call(&h.app, Method::GET, "/api/v1/statistics", &auth, None).await;
    assert_eq!(
        (
            stats["devices"]["value"].as_i64(),
            stats["system_integrators"]["value"].as_i64()
        ),
        (Some(1), Some(2))
    );
    // Week over week, from the snapshot of the same day last week.
    let root_scope = h.store.scope_of(root).await.expect("scope");
    h.store
        .save_daily_counters(
            &root_scope,
            store::today() - 7,
            &store::Counters {
                devices: 0,
                integrators: 1,
                ..Default::default()
            },
        )
        .await
        .expect("snapshot");
    let (_, _, stats) = call(&h.app, Method::GET, "/api/v1/statistics", &auth, None).await;
    assert_eq!(stats["devices"]["week_ago"].as_i64(), Some(0));
    assert_eq!(stats["devices"]["change"].as_i64(), Some(1));
    assert_eq!(stats["system_integrators"]["change"].as_i64(), Some(1));
    let (_, _, stats) = call(&h.app, Method::GET, "/api/v1/statistics", &acme_auth, None).await;
    assert_eq!(stats["devices"]["value"].as_i64(), Some(0));
    assert!(stats["devices"]["week_ago"].is_null());
}

async fn call_csv(
    app: &axum::Router,
    uri: &str,
    auth: &[(&str, &str)],
    csv: &str,
) -> (StatusCode, axum::http::HeaderMap, Value) {
    let (status, headers, text) = post_raw(app, uri, auth, "text/csv", csv).await;
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn bad_requests_get_problem_details() {
    let h = harness().await;
    let admin = format!("Bearer {}", login(&h.app, "admin", &h.admin_password).await);
    let auth = [("authorization", admin.as_str())];
    let (status, headers, body) = call(&h.app, Method::GET, "/api/v1/devices", &[], None).await;
    assert_eq!(
        (status, headers[header::CONTENT_TYPE].to_str().ok()),
        (StatusCode::UNAUTHORIZED, Some("application/problem+json"))
    );
    assert_eq!(body["title"], "Not logged in");
    let (status, _, body) = call(
        &h.app,
        Method::POST,
        "/api/v1/device-models",
        &auth,
        Some(json!({"name": "", "vendor": "D-Link", "hardware_revision": "A1", "topic_segment": "Bad Segment"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["field"].as_str())
        .collect();
    assert_eq!(fields, ["name", "topic_segment"]);
    let (status, _, body) = call(
        &h.app,
        Method::POST,
        "/api/v1/organisations",
        &auth,
        Some(json!({"parent_id": "x"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _, _) = call(
        &h.app,
        Method::GET,
        "/api/v1/devices?limit=abc",
        &auth,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, body) =
        call_csv(&h.app, "/api/v1/devices/import", &auth, "serial,colour\n").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["detail"].as_str().expect("detail").contains("line 1"));
    let (status, _, _) = call(&h.app, Method::GET, "/api/v1/nothing", &auth, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, _, page) = call(&h.app, Method::GET, "/api/v1/devices/999", &auth, None).await;
    assert_eq!(page["status"], 404);
}

/// An API with the broker hook secret `hook-secret` and one device
/// `00-11-22-33-44-55` with MQTT credentials: (app, device secret, admin
/// password, the data directory kept alive).
async fn hook_fixture() -> (axum::Router, String, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store::Store::open_data_dir(dir.path())
        .await
        .expect("store");
    let admin_password = platform::accounts::bootstrap(&store, None)
        .await
        .expect("bootstrap")
        .expect("admin");
    let app = api::app_with(
        store.clone(),
        api::ApiOptions {
            broker_hook_secret: Some("hook-secret".into()),
            ..Default::default()
        },
    );
    let admin = format!("Bearer {}", login(&app, "admin", &admin_password).await);
    let auth = [("authorization", admin.as_str())];
    create_model(&app, &auth).await;
    call_csv(
        &app,
        "/api/v1/devices/import",
        &auth,
        "serial,mac,model\nS1,00:11:22:33:44:55,311-a1\n",
    )
    .await;
    let (_, _, page) = call(&app, Method::GET, "/api/v1/devices", &auth, None).await;
    let id = page["devices"][0]["id"].as_i64().expect("id");
    let (status, _, creds) = call(
        &app,
        Method::POST,
        &format!("/api/v1/devices/{id}/credentials"),
        &auth,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(creds["topic_prefix"], "dwr/311-a1/00-11-22-33-44-55/#");
    let secret = creds["password"].as_str().expect("secret").to_owned();
    (app, secret, admin_password, dir)
}

/// A POST with any body and content type; the answer's text.
async fn post_raw(
    app: &axum::Router,
    uri: &str,
    headers: &[(&str, &str)],
    content_type: &str,
    body: &str,
) -> (StatusCode, axum::http::HeaderMap, String) {
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(header::CONTENT_TYPE, content_type);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let response = app
        .clone()
        .oneshot(req.body(Body::from(body.to_owned())).expect("request"))
        .await
        .expect("response");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (
        status,
        headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

#[tokio::test]
async fn an_external_broker_asks_in_emqx_format() {
    let (app, secret, admin_password, dir) = hook_fixture().await;
    let secret = secret.as_str();
    let store = store::Store::open_data_dir(dir.path())
        .await
        .expect("store");

    let hook = [("authorization", "Bearer hook-secret")];
    let ask = |body: Value| {
        call(
            &app,
            Method::POST,
            "/api/v1/mqtt/authenticate",
            &hook,
            Some(body),
        )
    };
    let (_, _, d) = ask(json!({"clientid": "00-11-22-33-44-55", "username": "00-11-22-33-44-55", "password": secret})).await;
    assert_eq!(
        (d["result"].as_str(), d["is_superuser"].as_bool()),
        (Some("allow"), Some(false))
    );
    let (_, _, d) = ask(json!({"username": "00:11:22:33:44:55", "password": "wrong"})).await;
    assert_eq!(d["result"], "deny");
    // The device's own secret with another client id (another device's, the
    // platform's) is denied: it could take over that session.
    for clientid in ["00-11-22-33-44-56", "telemark-platform-ingest", ""] {
        let (_, _, d) =
            ask(json!({"clientid": clientid, "username": "00-11-22-33-44-55", "password": secret}))
                .await;
        assert_eq!(d["result"], "deny", "client id {clientid:?}");
    }
    let (_, _, d) = ask(json!({"username": "admin", "password": admin_password})).await;
    assert_eq!(
        (d["result"].as_str(), d["is_superuser"].as_bool()),
        (Some("allow"), Some(true))
    );
    let authorize = |topic: &str, action: &str| {
        call(
            &app,
            Method::POST,
            "/api/v1/mqtt/authorize",
            &hook,
            Some(json!({"username": "00-11-22-33-44-55", "topic": topic, "action": action})),
        )
    };
    assert_eq!(
        authorize("dwr/311-a1/00-11-22-33-44-55/hardware/lte", "publish")
            .await
            .2["result"],
        "allow"
    );
    assert_eq!(
        authorize("dwr/311-a1/00-11-22-33-44-56/hardware/lte", "publish")
            .await
            .2["result"],
        "deny"
    );
    assert_eq!(authorize("dwr/#", "subscribe").await.2["result"], "deny");
    // Without the hook secret the broker gets nothing.
    let (status, _, _) = call(
        &app,
        Method::POST,
        "/api/v1/mqtt/authenticate",
        &[],
        Some(json!({"username": "admin"})),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // And an API without a hook secret has no such endpoint.
    let plain = api::app(store);
    let (status, _, _) = call(
        &plain,
        Method::POST,
        "/api/v1/mqtt/authenticate",
        &hook,
        Some(json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn repeated_failed_logins_lock_the_name() {
    let h = harness().await;
    for _ in 0..5 {
        let (status, _, _) = call(
            &h.app,
            Method::POST,
            "/api/v1/session",
            &[],
            Some(json!({"username": "admin", "password": "guess"})),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    // Even the right password is refused while the name is locked.
    let (status, headers, body) = call(
        &h.app,
        Method::POST,
        "/api/v1/session",
        &[],
        Some(json!({"username": "admin", "password": h.admin_password})),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(headers.contains_key(header::RETRY_AFTER));
}

#[tokio::test]
async fn changes_land_in_the_system_log_and_its_csv() {
    let h = harness().await;
    let admin = format!("Bearer {}", login(&h.app, "admin", &h.admin_password).await);
    let auth = [("authorization", admin.as_str())];
    let (_, _, me) = call(&h.app, Method::GET, "/api/v1/session", &auth, None).await;
    call(
        &h.app,
        Method::POST,
        "/api/v1/organisations",
        &auth,
        Some(json!({"parent_id": me["organisation_id"], "name": "Acme, Inc."})),
    )
    .await;
    create_model(&h.app, &auth).await;
    call_csv(
        &h.app,
        "/api/v1/devices/import?source=erp.csv",
        &auth,
        "serial,mac,model\nS1,00:11:22:33:44:55,311-a1\n",
    )
    .await;
    let (status, _, log) = call(&h.app, Method::GET, "/api/v1/audit", &auth, None).await;
    assert_eq!(status, StatusCode::OK);
    let actions: Vec<&str> = log
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        [
            "device.import",
            "device_model.create",
            "organisation.create"
        ],
        "newest first"
    );
    assert_eq!(log[0]["actor"], "admin");
    assert_eq!(log[0]["after"], "1 accepted, 0 rejected");
    let (_, _, only) = call(
        &h.app,
        Method::GET,
        "/api/v1/audit?search=organisation",
        &auth,
        None,
    )
    .await;
    assert_eq!(only.as_array().map(Vec::len), Some(1));
    assert!(
        only[0]["after"]
            .as_str()
            .expect("after")
            .contains("Acme, Inc.")
    );

    let request = Request::builder()
        .uri("/api/v1/audit.csv")
        .header("authorization", admin.as_str())
        .body(Body::empty())
        .expect("request");
    let response = h.app.clone().oneshot(request).await.expect("response");
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/csv; charset=utf-8"
    );
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let text = String::from_utf8(bytes.to_vec()).expect("utf8");
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("id,created_at,organisation_id,actor,action,target,before,after,address")
    );
    assert_eq!(text.lines().count(), 4);
    assert!(
        text.contains("\"{\"\"id\"\""),
        "a JSON cell is quoted: {text}"
    );
}

#[tokio::test]
async fn users_roles_password_change_and_disable() {
    let h = harness().await;
    let admin = format!("Bearer {}", login(&h.app, "admin", &h.admin_password).await);
    let auth = [("authorization", admin.as_str())];
    let (_, _, me) = call(&h.app, Method::GET, "/api/v1/session", &auth, None).await;
    let (_, _, acme) = call(
        &h.app,
        Method::POST,
        "/api/v1/organisations",
        &auth,
        Some(json!({"parent_id": me["organisation_id"], "name": "Acme"})),
    )
    .await;
    // A role must fit the organisation, a password the policy.
    let (status, _, body) = call(
        &h.app,
        Method::POST,
        "/api/v1/users",
        &auth,
        Some(json!({"organisation_id": acme["id"], "username": "ops", "password": "long-enough-1", "role": "operator-admin"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _, _) = call(
        &h.app,
        Method::POST,
        "/api/v1/users",
        &auth,
        Some(json!({"organisation_id": acme["id"], "username": "eng", "password": "short", "role": "engineer"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, eng) = call(
        &h.app,
        Method::POST,
        "/api/v1/users",
        &auth,
        Some(json!({"organisation_id": acme["id"], "username": "eng", "password": "engineer-pass-1", "role": "engineer"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{eng}");
    let (status, _, _) = call(
        &h.app,
        Method::POST,
        "/api/v1/users",
        &auth,
        Some(json!({"organisation_id": acme["id"], "username": "eng", "password": "engineer-pass-1", "role": "viewer"})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);

    // The engineer changes its password, and is not an admin.
    let eng_token = format!("Bearer {}", login(&h.app, "eng", "engineer-pass-1").await);
    let eng_auth = [("authorization", eng_token.as_str())];
    // Someone who learned the old password logged in elsewhere and made a
    // token: the change must end both.
    let stolen = format!("Bearer {}", login(&h.app, "eng", "engineer-pass-1").await);
    let (status, _, stolen_token) = call(
        &h.app,
        Method::POST,
        "/api/v1/tokens",
        &[("authorization", stolen.as_str())],
        Some(json!({"name": "stolen"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{stolen_token}");
    assert!(stolen_token["expires_at"].is_null());
    let stolen_token = format!("Bearer {}", stolen_token["token"].as_str().expect("token"));
    let (status, _, _) = call(&h.app, Method::GET, "/api/v1/users", &eng_auth, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, body) = call(
        &h.app,
        Method::POST,
        "/api/v1/session/password",
        &eng_auth,
        Some(json!({"current_password": "wrong", "new_password": "engineer-pass-2"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["errors"][0]["field"], "current_password");
    let (status, _, _) = call(
        &h.app,
        Method::POST,
        "/api/v1/session/password",
        &eng_auth,
        Some(json!({"current_password": "engineer-pass-1", "new_password": "engineer-pass-2"})),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for (who, bearer) in [("other session", &stolen), ("API token", &stolen_token)] {
        let (status, _, _) = call(
            &h.app,
            Method::GET,
            "/api/v1/session",
            &[("authorization", bearer.as_str())],
            None,
        )
        .await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{who} outlived the password"
        );
    }
    let (status, _, _) = call(&h.app, Method::GET, "/api/v1/session", &eng_auth, None).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the session that changed it goes on"
    );
    login(&h.app, "eng", "engineer-pass-2").await;
    // A token with an expiry says when; an expiry out of range is refused.
    let (status, _, expiring) = call(
        &h.app,
        Method::POST,
        "/api/v1/tokens",
        &eng_auth,
        Some(json!({"name": "ci", "expires_in_days": 30})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{expiring}");
    let in_30_days = store::now_millis() + 30 * 24 * 3600 * 1000;
    let expires_at = expiring["expires_at"].as_i64().expect("expires_at");
    assert!((in_30_days - expires_at).abs() < 60_000, "{expiring}");
    let eng_api_token = format!("Bearer {}", expiring["token"].as_str().expect("token"));
    for days in [0, 3651] {
        let (status, _, _) = call(
            &h.app,
            Method::POST,
            "/api/v1/tokens",
            &eng_auth,
            Some(json!({"name": "x", "expires_in_days": days})),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{days} days");
    }

    // Disabling ends its sessions and its logins.
    let (status, _, user) = call(
        &h.app,
        Method::POST,
        &format!("/api/v1/users/{}/state", eng["id"]),
        &auth,
        Some(json!({"disabled": true})),
    )
    .await;
    assert_eq!(
        (status, user["disabled"].as_bool()),
        (StatusCode::OK, Some(true))
    );
    let (status, _, _) = call(&h.app, Method::GET, "/api/v1/session", &eng_auth, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = call(
        &h.app,
        Method::POST,
        "/api/v1/session",
        &[],
        Some(json!({"username": "eng", "password": "engineer-pass-2"})),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Its API token is revoked for good: enabling the user again does not
    // bring it back.
    let state_uri = format!("/api/v1/users/{}/state", eng["id"]);
    let set_disabled = |disabled: bool| {
        call(
            &h.app,
            Method::POST,
            &state_uri,
            &auth,
            Some(json!({ "disabled": disabled })),
        )
    };
    set_disabled(false).await;
    let (status, _, _) = call(
        &h.app,
        Method::GET,
        "/api/v1/session",
        &[("authorization", eng_api_token.as_str())],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    set_disabled(true).await;
    let (status, _, _) = call(
        &h.app,
        Method::POST,
        &format!("/api/v1/users/{}/state", me["user_id"]),
        &auth,
        Some(json!({"disabled": true})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "no disabling oneself");
    let (_, _, users) = call(&h.app, Method::GET, "/api/v1/users", &auth, None).await;
    assert_eq!(users.as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn license_keys_bind_to_a_device_with_a_token_it_can_verify() {
    let h = harness().await;
    let admin = format!("Bearer {}", login(&h.app, "admin", &h.admin_password).await);
    let auth = [("authorization", admin.as_str())];
    let (_, _, me) = call(&h.app, Method::GET, "/api/v1/session", &auth, None).await;
    let root = me["organisation_id"].clone();
    create_model(&h.app, &auth).await;
    call_csv(
        &h.app,
        "/api/v1/devices/import",
        &auth,
        "serial,mac,model\nL1,00:11:22:33:77:01,311-a1\nL2,00:11:22:33:77:02,311-a1\n",
    )
    .await;
    let (_, _, page) = call(&h.app, Method::GET, "/api/v1/devices", &auth, None).await;
    let (d1, d2) = (
        page["devices"][0]["id"].clone(),
        page["devices"][1]["id"].clone(),
    );

    let (status, _, plan) = call(
        &h.app,
        Method::POST,
        "/api/v1/service-models",
        &auth,
        Some(json!({"name": "Fleet Pro", "features": ["telemetry", "fota"], "duration_days": 365})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{plan}");
    let (status, _, keys) = call(
        &h.app,
        Method::POST,
        "/api/v1/license-keys",
        &auth,
        Some(json!({"organisation_id": root, "service_model_id": plan["id"], "count": 3})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{keys}");
    let keys = keys.as_array().expect("keys").clone();
    assert_eq!(keys.len(), 3);
    let key_text = keys[0]["key"].as_str().expect("key");
    assert_eq!(key_text.len(), 23);
    assert_eq!(key_text.matches('-').count(), 3);
    assert!(keys.iter().all(|k| k["state"] == "available"));
    let k1 = keys[0]["id"].as_i64().expect("id");

    let (status, _, bound) = call(
        &h.app,
        Method::POST,
        &format!("/api/v1/license-keys/{k1}/bind"),
        &auth,
        Some(json!({"device_id": d1})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{bound}");
    assert_eq!(bound["state"], "bound");
    let token = bound["token"].as_str().expect("token");
    // The device checks it offline with the platform's public key.
    let (_, _, public) = call(&h.app, Method::GET, "/api/v1/license/public-key", &[], None).await;
    let public = license::public_key_from_base64(public["public_key"].as_str().expect("key"))
        .expect("public key");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs() as i64;
    let claims =
        license::verify(&public, token, "00-11-22-33-77-01", now).expect("valid for this device");
    assert_eq!(claims.features, ["telemetry", "fota"]);
    assert!(claims.expires_at - now > 364 * 86_400);
    assert!(license::verify(&public, token, "00-11-22-33-77-02", now).is_err());
    let (_, _, device) = call(
        &h.app,
        Method::GET,
        &format!("/api/v1/devices/{d1}"),
        &auth,
        None,
    )
    .await;
    assert_eq!(device["license_state"], "bound");

    // One license per device; a bound key cannot be bound again.
    let k2 = keys[1]["id"].as_i64().expect("id");
    let (status, _, _) = call(
        &h.app,
        Method::POST,
        &format!("/api/v1/license-keys/{k2}/bind"),
        &auth,
        Some(json!({"device_id": d1})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _, _) = call(
        &h.app,
        Method::POST,
        &format!("/api/v1/license-keys/{k1}/bind"),
        &auth,
        Some(json!({"device_id": d2})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    // Unbind frees it; revoke ends it.
    let (_, _, freed) = call(
        &h.app,
        Method::POST,
        &format!("/api/v1/license-keys/{k1}/unbind"),
        &auth,
        None,
    )
    .await;
    assert_eq!(
        (freed["state"].as_str(), freed["token"].is_null()),
        (Some("available"), true)
    );
    let (_, _, device) = call(
        &h.app,
        Method::GET,
        &format!("/api/v1/devices/{d1}"),
        &auth,
        None,
    )
    .await;
    assert_eq!(device["license_state"], "unlicensed");
    let (_, _, rebound) = call(
        &h.app,
        Method::POST,
        &format!("/api/v1/license-keys/{k1}/bind"),
        &auth,
        Some(json!({"device_id": d2})),
    )
    .await;
    assert_eq!(rebound["state"], "bound");
    let (_, _, revoked) = call(
        &h.app,
        Method::POST,
        &format!("/api/v1/license-keys/{k1}/revoke"),
        &auth,
        None,
    )
    .await;
    assert_eq!(revoked["state"], "revoked");
    let (_, _, device) = call(
        &h.app,
        Method::GET,
        &format!("/api/v1/devices/{d2}"),
        &auth,
        None,
    )
    .await;
    assert_eq!(device["license_state"], "revoked");
    let (_, _, stats) = call(&h.app, Method::GET, "/api/v1/statistics", &auth, None).await;
    assert_eq!(stats["license_keys"]["value"].as_i64(), Some(3));
    let (_, _, available) = call(
        &h.app,
        Method::GET,
        "/api/v1/license-keys?state=available",
        &auth,
        None,
    )
    .await;
    assert_eq!(available.as_array().map(Vec::len), Some(2));
    let (_, _, log) = call(
        &h.app,
        Method::GET,
        "/api/v1/audit?search=license",
        &auth,
        None,
    )
    .await;
    let actions: Vec<&str> = log
        .as_array()
        .expect("log")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        [
            "license.revoke",
            "license.bind",
            "license.unbind",
            "license.bind",
            "license.generate"
        ]
    );
}

/// Every role of one integrator against every endpoint that names another
/// integrator's object: 403 or 404, and never the other tenant's data.
#[tokio::test]
async fn tenant_isolation_matrix() {
    let h = harness().await;
    let admin = format!("Bearer {}", login(&h.app, "admin", &h.admin_password).await);
    let op = [("authorization", admin.as_str())];
    let (_, _, me) = call(&h.app, Method::GET, "/api/v1/session", &op, None).await;
    let (_, _, a) = call(
        &h.app,
        Method::POST,
        "/api/v1/organisations",
        &op,
        Some(json!({"parent_id": me["organisation_id"], "name": "Tenant A"})),
    )
    .await;
    let (_, _, b) = call(
        &h.app,
        Method::POST,
        "/api/v1/organisations",
        &op,
        Some(json!({"parent_id": me["organisation_id"], "name": "Tenant B"})),
    )
    .await;
    let (_, _, b_customer) = call(
        &h.app,
        Method::POST,
        "/api/v1/organisations",
        &op,
        Some(json!({"parent_id": b["id"], "name": "B Customer"})),
    )
    .await;
    create_model(&h.app, &op).await;
    let (_, _, b_import) = call_csv(
        &h.app,
        "/api/v1/devices/import?source=b-secret.csv",
        &op,
        &format!(
            "serial,mac,model,organisation\nB-SECRET-1,00:11:22:33:88:01,311-a1,{}\n",
            b_customer["id"]
        ),
    )
    .await;
    let (_, _, page) = call(
        &h.app,
        Method::GET,
        "/api/v1/devices?search=B-SECRET",
        &op,
        None,
    )
    .await;
    let b_device = page["devices"][0]["id"].as_i64().expect("device");
    let (_, _, plan) = call(
        &h.app,
        Method::POST,
        "/api/v1/service-models",
        &op,
        Some(json!({"name": "P", "duration_days": 30})),
    )
    .await;
    let (_, _, b_keys) = call(
        &h.app,
        Method::POST,
        "/api/v1/license-keys",
        &op,
        Some(json!({"organisation_id": b["id"], "service_model_id": plan["id"], "count": 1})),
    )
    .await;
    let b_key = b_keys[0]["id"].as_i64().expect("key");
    let (_, _, b_user) = call(
        &h.app,
        Method::POST,
        "/api/v1/users",
        &op,
        Some(json!({"organisation_id": b["id"], "username": "b-admin", "password": "b-admin-password", "role": "integrator-admin"})),
    )
    .await;

    let mut tokens = Vec::new();
    for role in ["integrator-admin", "engineer", "viewer"] {
        let name = format!("a-{role}");
        let (status, _, _) = call(
            &h.app,
            Method::POST,
            "/api/v1/users",
            &op,
            Some(json!({"organisation_id": a["id"], "username": name, "password": "tenant-a-password", "role": role})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
        tokens.push((
            role,
            format!("Bearer {}", login(&h.app, &name, "tenant-a-password").await),
        ));
    }
    let b_id = b["id"].clone();
    let requests: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, format!("/api/v1/devices/{b_device}"), None),
        (
            Method::GET,
            format!("/api/v1/devices?organisation_id={b_id}"),
            None,
        ),
        (
            Method::GET,
            format!("/api/v1/imports/{}", b_import["id"]),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/devices/{b_device}/credentials"),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/devices/{b_device}/certificate"),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!(
                "/api/v1/license-keys/import?organisation_id={b_id}&service_model_id={}",
                plan["id"]
            ),
            Some(json!({"license_keys": ["TENANT-B-KEY-1"]})),
        ),
        (
            Method::POST,
            "/api/v1/organisations".into(),
            Some(json!({"parent_id": b_id, "name": "x"})),
        ),
        (
            Method::POST,
            "/api/v1/alarm-rules".into(),
            Some(
                json!({"organisation_id": b_id, "name": "x", "kind": "offline", "severity": "minor"}),
            ),
        ),
        (
            Method::POST,
            "/api/v1/webhooks".into(),
            Some(json!({"organisation_id": b_id, "url": "http://93.184.215.14:9/x"})),
        ),
        (
            Method::GET,
            format!("/api/v1/devices/{b_device}/metrics"),
            None,
        ),
        (
            Method::GET,
            format!("/api/v1/devices/{b_device}/metrics/cpu.usage_percent"),
            None,
        ),
        (
            Method::GET,
            format!("/api/v1/devices/{b_device}/logs"),
            None,
        ),
        (
            Method::GET,
            format!("/api/v1/devices/{b_device}/telemetry-faults"),
            None,
        ),
        (
            Method::POST,
            "/api/v1/users".into(),
            Some(
                json!({"organisation_id": b_id, "username": "x-user", "password": "long-password-1", "role": "viewer"}),
            ),
        ),
        (
            Method::POST,
            format!("/api/v1/users/{}/state", b_user["id"]),
            Some(json!({"disabled": true})),
        ),
        (
            Method::POST,
            "/api/v1/license-keys".into(),
            Some(json!({"organisation_id": b_id, "service_model_id": plan["id"], "count": 1})),
        ),
        (
            Method::POST,
            format!("/api/v1/license-keys/{b_key}/bind"),
            Some(json!({"device_id": b_device})),
        ),
        (
            Method::POST,
            format!("/api/v1/license-keys/{b_key}/unbind"),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/license-keys/{b_key}/revoke"),
            None,
        ),
    ];
    for (role, token) in &tokens {
        let auth = [("authorization", token.as_str())];
        for (method, uri, body) in &requests {
            let (status, _, response) =
                call(&h.app, method.clone(), uri, &auth, body.clone()).await;
            let text = response.to_string();
            assert!(
                status == StatusCode::FORBIDDEN || status == StatusCode::NOT_FOUND,
                "{role} {method} {uri} answered {status}: {text}"
            );
            assert!(
                !text.contains("B-SECRET")
                    && !text.contains("b-secret")
                    && !text.contains("Tenant B"),
                "{role} {uri} leaked: {text}"
            );
        }
        // Lists show A's world only.
        for uri in [
            "/api/v1/organisations",
            "/api/v1/devices",
            "/api/v1/license-keys",
            "/api/v1/users",
            "/api/v1/audit",
            "/api/v1/imports",
        ] {
            let (_, _, response) = call(&h.app, Method::GET, uri, &auth, None).await;
            let text = response.to_string();
            assert!(
                !text.contains("B-SECRET")
                    && !text.contains("Tenant B")
                    && !text.contains("b-admin"),
                "{role} {uri} leaked: {text}"
            );
        }
        let (_, _, imports) = call(&h.app, Method::GET, "/api/v1/imports", &auth, None).await;
        assert!(
            imports
                .as_array()
                .is_some_and(|list| list.iter().all(|r| r["id"] != b_import["id"])),
            "{role} sees B's import record: {imports}"
        );
    }
    // Nothing of B changed.
    let (_, _, key) = call(
        &h.app,
        Method::GET,
        "/api/v1/license-keys?state=available",
        &op,
        None,
    )
    .await;
    assert!(
        key.as_array()
            .expect("keys")
            .iter()
            .any(|k| k["id"].as_i64() == Some(b_key))
    );
    login(&h.app, "b-admin", "b-admin-password").await;
}

#[tokio::test]
async fn long_lived_api_tokens_work_until_revoked() {
    let h = harness().await;
    let admin = format!("Bearer {}", login(&h.app, "admin", &h.admin_password).await);
    let auth = [("authorization", admin.as_str())];
    let (status, _, created) = call(
        &h.app,
        Method::POST,
        "/api/v1/tokens",
        &auth,
        Some(json!({"name": "erp sync"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let token = created["token"].as_str().expect("token").to_owned();
    assert!(token.starts_with("tmk_"));
    let bearer = format!("Bearer {token}");
    let script = [("authorization", bearer.as_str())];
    let (status, _, me) = call(&h.app, Method::GET, "/api/v1/session", &script, None).await;
    assert_eq!(
        (status, me["username"].as_str()),
        (StatusCode::OK, Some("admin"))
    );
    // Listed without the secret.
    let (_, _, list) = call(&h.app, Method::GET, "/api/v1/tokens", &auth, None).await;
    assert_eq!(list[0]["name"], "erp sync");
    assert!(list[0].get("token").is_none());
    let (status, _, _) = call(
        &h.app,
        Method::DELETE,
        &format!("/api/v1/tokens/{}", created["id"]),
        &auth,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, _) = call(&h.app, Method::GET, "/api/v1/session", &script, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = call(&h.app, Method::DELETE, "/api/v1/tokens/999", &auth, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_openapi_document_describes_every_endpoint() {
    let h = harness().await;
    let (status, _, doc) = call(&h.app, Method::GET, "/api/openapi.json", &[], None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().expect("paths");
    for (path, method) in [
        ("/api/v1/session", "post"),
        ("/api/v1/devices", "get"),
        ("/api/v1/devices/import", "post"),
        ("/api/v1/license-keys/{id}/bind", "post"),
        ("/api/v1/audit.csv", "get"),
        ("/api/v1/mqtt/authorize", "post"),
    ] {
        assert!(
            paths[path][method].is_object(),
            "{method} {path} is documented"
        );
    }
    // Errors are documented as problem documents, with field errors.
    let problem = &doc["components"]["schemas"]["Problem"]["properties"];
    assert!(problem["errors"].is_object(), "{problem}");
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    // Every documented operation answers (no 404 "no such endpoint" or 405
    // from a path that the document and the router disagree on).
    let token = login(&h.app, "admin", &h.admin_password).await;
    let bearer = format!("Bearer {token}");
    for (path, item) in paths {
        let concrete = path.replace("{id}", "1");
        for method in item.as_object().expect("path item").keys() {
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            if m != Method::GET {
                continue;
            }
            let (status, _, body) = call(
                &h.app,
                m,
                &concrete,
                &[("authorization", bearer.as_str())],
                None,
            )
            .await;
            assert!(
                status != StatusCode::METHOD_NOT_ALLOWED && !status.is_server_error(),
                "GET {concrete}: {status} {body}"
            );
        }
    }
}

#[tokio::test]
async fn device_certificates_from_a_csr_a_registered_pem_or_generated() {
    let h = harness().await;
    let admin = format!("Bearer {}", login(&h.app, "admin", &h.admin_password).await);
    let auth = [("authorization", admin.as_str())];
    create_model(&h.app, &auth).await;
    call_csv(
        &h.app,
        "/api/v1/devices/import",
        &auth,
        "serial,mac,model\nC1,00:11:22:33:88:01,311-a1\nC2,00:11:22:33:88:02,311-a1\n",
    )
    .await;
    let (_, _, page) = call(&h.app, Method::GET, "/api/v1/devices", &auth, None).await;
    let (d1, d2) = (
        page["devices"][0]["id"].as_i64().expect("id"),
        page["devices"][1]["id"].as_i64().expect("id"),
    );
    // The device makes its key and a CSR; its key never leaves it. The
    // subject it asks for is replaced by its own id.
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec!["evil.example".into()]).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "someone else");
    let csr = params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    let (status, _, issued) = call(
        &h.app,
        Method::POST,
        &format!("/api/v1/devices/{d1}/certificate"),
        &auth,
        Some(json!({ "csr_pem": csr })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    assert!(
        issued["private_key_pem"].is_null(),
        "no key when the device sent a CSR"
    );
    assert_eq!(issued["username"], "00-11-22-33-88-01");
    let fingerprint = issued["certificate_sha256"].as_str().expect("sha256");
    let guard = platform::login_guard::LoginGuard::default();
    let by_certificate = |client_id: &'static str, username: &'static str| {
        platform::device_access::authenticate(
            &h.store,
            &guard,
            platform::device_access::MqttLogin {
                client_id,
                username: Some(username),
                password: None,
                certificate_sha256: Some(fingerprint),
                source: std::net::Ipv4Addr::LOCALHOST.into(),
            },
        )
    };
    let principal = by_certificate("00-11-22-33-88-01", "00-11-22-33-88-01")
        .await
        .expect("the broker accepts the certificate");
    assert!(matches!(
        principal,
        platform::device_access::Principal::Device { .. }
    ));
    // Another device presenting that certificate is not that device.
    assert!(
        by_certificate("00-11-22-33-88-02", "00-11-22-33-88-02")
            .await
            .is_err()
    );
    // The certificate's device naming another session is refused.
    assert_eq!(
        by_certificate("00-11-22-33-88-02", "00-11-22-33-88-01").await,
        Err(platform::device_access::Denial::ClientIdMismatch)
    );
    // The same certificate cannot belong to two devices.
    let pem = issued["certificate_pem"].as_str().expect("pem").to_owned();
    let (status, _, body) = call(
        &h.app,
        Method::POST,
        &format!("/api/v1/devices/{d2}/certificate"),
        &auth,
        Some(json!({ "certificate_pem": pem })),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    // Bad input is named by field.
    for (body, field) in [
        (json!({"csr_pem": "not a request"}), "csr_pem"),
        (
            json!({"certificate_pem": "-----BEGIN CERTIFICATE-----\nAAAA\n"}),
            "certificate_pem",
        ),
        (
            json!({"certificate_pem": key.serialize_pem()}),
            "certificate_pem",
        ),
    ] {
        let (status, _, problem) = call(
            &h.app,
            Method::POST,
            &format!("/api/v1/devices/{d2}/certificate"),
            &auth,
            Some(body),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
        assert_eq!(problem["errors"][0]["field"], field, "{problem}");
    }
    // Generated: key and certificate, signed by the device CA the API shows.
    let (status, _, generated) = call(
        &h.app,
        Method::POST,
        &format!("/api/v1/devices/{d2}/certificate"),
        &auth,
        Some(json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{generated}");
    assert!(
        generated["private_key_pem"]
            .as_str()
            .is_some_and(|k| k.contains("PRIVATE KEY"))
    );
    let (_, _, ca) = call(&h.app, Method::GET, "/api/v1/device-ca", &auth, None).await;
    assert_eq!(ca["certificate_pem"], generated["ca_pem"]);
    // Each issue is in the system log.
    let (_, _, log) = call(
        &h.app,
        Method::GET,
        "/api/v1/audit?search=device.certificate",
        &auth,
        None,
    )
    .await;
    assert_eq!(log.as_array().map(Vec::len), Some(2), "{log}");
}

#[tokio::test]
async fn license_keys_imported_from_the_erp_with_a_record_per_batch() {
    let h = harness().await;
    let admin = format!("Bearer {}", login(&h.app, "admin", &h.admin_password).await);
    let auth = [("authorization", admin.as_str())];
    let (_, _, me) = call(&h.app, Method::GET, "/api/v1/session", &auth, None).await;
    let root = me["organisation_id"].as_i64().expect("org");
    let (_, _, plan) = call(
        &h.app,
        Method::POST,
        "/api/v1/service-models",
        &auth,
        Some(json!({"name": "Fleet Basic", "duration_days": 365})),
    )
    .await;
    let plan = plan["id"].as_i64().expect("plan");
    let uri = |partial: bool| {
        format!(
            "/api/v1/license-keys/import?organisation_id={root}&service_model_id={plan}&source=erp-keys.csv&partial={partial}"
        )
    };
    // Line 3 is too short, line 5 repeats line 2: all or nothing writes none.
    let csv = "key,order\nabcd1-efgh2-jkmn3,PO-1\nSHORT,PO-1\nZZZZ9-YYYY8-XXXX7,PO-2\nABCD1-EFGH2-JKMN3,PO-3\n";
    let (status, _, record) = call_csv(&h.app, &uri(false), &auth, csv).await;
    assert_eq!(status, StatusCode::OK, "{record}");
    assert_eq!(record["kind"], "license_keys");
    assert_eq!(record["rows_accepted"], 0, "{record}");
    assert_eq!(record["rows_rejected"], 2);
    assert_eq!(record["rejections"][0]["line"], 3);
    assert_eq!(record["rejections"][1]["line"], 5);
    assert!(
        record["rejections"][1]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("repeats line 2")),
        "{record}"
    );
    let (_, _, keys) = call(&h.app, Method::GET, "/api/v1/license-keys", &auth, None).await;
    assert_eq!(
        keys.as_array().map(Vec::len),
        Some(0),
        "nothing half-written"
    );
    // Partial: the two good keys, upper-cased, available to bind.
    let (_, _, record) = call_csv(&h.app, &uri(true), &auth, csv).await;
    assert_eq!(record["rows_accepted"], 2, "{record}");
    let (_, _, keys) = call(&h.app, Method::GET, "/api/v1/license-keys", &auth, None).await;
    let texts: Vec<&str> = keys
        .as_array()
        .expect("keys")
        .iter()
        .filter_map(|k| k["key"].as_str())
        .collect();
    assert_eq!(texts, ["ABCD1-EFGH2-JKMN3", "ZZZZ9-YYYY8-XXXX7"]);
    assert!(
        keys.as_array()
            .expect("keys")
            .iter()
            .all(|k| k["state"] == "available")
    );
    // The ERP's JSON batch: a known key is rejected by position.
    let (status, _, record) = call(
        &h.app,
        Method::POST,
        &format!("/api/v1/license-keys/import?organisation_id={root}&service_model_id={plan}"),
        &auth,
        Some(json!({"license_keys": ["NEWKEY-0001", "ZZZZ9-YYYY8-XXXX7"]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{record}");
    assert_eq!(record["rows_accepted"], 0);
    assert_eq!(record["rejections"][0]["line"], 2);
    assert!(
        record["rejections"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("already registered"))
    );
    // A file without a key column is refused as a whole.
    let (status, _, problem) = call_csv(&h.app, &uri(false), &auth, "serial\nX\n").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    // The import records list both kinds, filterable.
    let (_, _, records) = call(
        &h.app,
        Method::GET,
        "/api/v1/imports?kind=license_keys",
        &auth,
        None,
    )
    .await;
    assert_eq!(records.as_array().map(Vec::len), Some(3), "{records}");
    assert_eq!(records[0]["source_name"], "erp.json");
    // A viewer may not import.
    let (_, _, viewer) = call(
        &h.app,
        Method::POST,
        "/api/v1/users",
        &auth,
        Some(json!({"organisation_id": root, "username": "watcher", "password": "watcher-password", "role": "viewer"})),
    )
    .await;
    assert_eq!(viewer["role"], "viewer");
    let token = format!(
        "Bearer {}",
        login(&h.app, "watcher", "watcher-password").await
    );
    let (status, _, _) = call_csv(
        &h.app,
        &uri(true),
        &[("authorization", token.as_str())],
        "key\nVIEWER-KEY-1\n",
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_device_list_sorts_filters_and_pages_with_a_cursor() {
    let h = harness().await;
    let admin = format!("Bearer {}", login(&h.app, "admin", &h.admin_password).await);
    let auth = [("authorization", admin.as_str())];
    create_model(&h.app, &auth).await;
    let mut csv = String::from("name,serial,mac,model,labels\n");
    for n in 0..25 {
        let label = if n % 5 == 0 { "pilot" } else { "field" };
        csv.push_str(&format!(
            "site-{:02},S{n:04},00:11:22:44:00:{n:02x},311-a1,{label}\n",
            25 - n
        ));
    }
    let (status, _, record) = call_csv(&h.app, "/api/v1/devices/import", &auth, &csv).await;
    assert_eq!(status, StatusCode::OK, "{record}");
    // Name order, ten at a time, by cursor.
    let mut names = Vec::new();
    let mut uri = "/api/v1/devices?sort=name&limit=10".to_owned();
    for _ in 0..5 {
        let (status, _, page) = call(&h.app, Method::GET, &uri, &auth, None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        names.extend(
            page["devices"]
                .as_array()
                .expect("devices")
                .iter()
                .map(|d| d["name"].as_str().expect("name").to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => uri = format!("/api/v1/devices?sort=name&limit=10&after={cursor}"),
            None => break,
        }
    }
    let expected: Vec<String> = (1..=25).map(|n| format!("site-{n:02}")).collect();
    assert_eq!(names, expected);
    let (_, _, page) = call(
        &h.app,
        Method::GET,
        "/api/v1/devices?label=pilot&sort=-serial",
        &auth,
        None,
    )
    .await;
    let serials: Vec<&str> = page["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .filter_map(|d| d["serial"].as_str())
        .collect();
    assert_eq!(serials, ["S0020", "S0015", "S0010", "S0005", "S0000"]);
    // A MAC typed with colons finds the device.
    let (_, _, page) = call(
        &h.app,
        Method::GET,
        "/api/v1/devices?search=00:11:22:44:00:0a",
        &auth,
        None,
    )
    .await;
    assert_eq!(page["devices"][0]["serial"], "S0010", "{page}");
    for (uri, field) in [
        ("/api/v1/devices?sort=colour", "sort"),
        ("/api/v1/devices?sort=name&after=zz", "after"),
        ("/api/v1/devices?sort=name&after_id=3", "after_id"),
    ] {
        let (status, _, problem) = call(&h.app, Method::GET, uri, &auth, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(problem["errors"][0]["field"], field, "{problem}");
    }
}

#[tokio::test]
async fn alarm_rules_alarms_and_webhooks_through_the_api() {
    let h = harness().await;
    let admin = format!("Bearer {}", login(&h.app, "admin", &h.admin_password).await);
    let auth = [("authorization", admin.as_str())];
    let (_, _, me) = call(&h.app, Method::GET, "/api/v1/session", &auth, None).await;
    let root = me["organisation_id"].clone();
    // Every broken field is named.
    let (status, _, problem) = call(
        &h.app,
        Method::POST,
        "/api/v1/alarm-rules",
        &auth,
        Some(json!({"organisation_id": root, "name": " ", "kind": "threshold", "severity": "loud", "duration_secs": -1})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["field"].as_str())
        .collect();
    assert_eq!(
        fields,
        [
            "name",
            "severity",
            "duration_secs",
            "metric",
            "comparison",
            "threshold"
        ]
    );
    let (status, _, rule) = call(
        &h.app,
        Method::POST,
        "/api/v1/alarm-rules",
        &auth,
        Some(json!({"organisation_id": root, "name": "Weak LTE", "kind": "threshold", "metric": "lte.rsrp_dbm",
                    "comparison": "<", "threshold": -110.0, "duration_secs": 600, "severity": "major"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{rule}");
    assert_eq!(rule["enabled"], true);
    let (status, _, off) = call(
        &h.app,
        Method::POST,
        &format!("/api/v1/alarm-rules/{}/state", rule["id"]),
        &auth,
        Some(json!({"enabled": false})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{off}");
    assert_eq!(off["enabled"], false);
    let (_, _, rules) = call(&h.app, Method::GET, "/api/v1/alarm-rules", &auth, None).await;
    assert_eq!(rules.as_array().map(Vec::len), Some(1));
    let (status, _, alarms) = call(
        &h.app,
        Method::GET,
        "/api/v1/alarms?state=open",
        &auth,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(alarms, json!([]));
    let (status, _, _) = call(
        &h.app,
        Method::GET,
        "/api/v1/alarms?state=sleeping",
        &auth,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = call(
        &h.app,
        Method::POST,
        "/api/v1/alarms/99/acknowledge",
        &auth,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // A webhook's secret is shown once.
    let (status, _, hook) = call(
        &h.app,
        Method::POST,
        "/api/v1/webhooks",
        &auth,
        Some(json!({"organisation_id": root, "url": "http://93.184.215.14:9/alarms"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{hook}");
    // Server-side request forgery: every inside address, however spelled.
    for inside in [
        "http://127.0.0.1:8080/api/v1/devices",
        "http://localhost/",
        "http://127.1/",
        "http://2130706433/",
        "http://[::ffff:127.0.0.1]/",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://[::1]:1883/",
    ] {
        let (status, _, problem) = call(
            &h.app,
            Method::POST,
            "/api/v1/webhooks",
            &auth,
            Some(json!({"organisation_id": root, "url": inside})),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{inside}: {problem}");
        assert_eq!(problem["errors"][0]["field"], "url", "{problem}");
    }
    assert_eq!(hook["secret"].as_str().map(str::len), Some(64));
    let (_, _, hooks) = call(&h.app, Method::GET, "/api/v1/webhooks", &auth, None).await;
    assert!(hooks[0]["secret"].is_null(), "{hooks}");
    let (status, _, _) = call(
        &h.app,
        Method::POST,
        "/api/v1/webhooks",
        &auth,
        Some(json!({"organisation_id": root, "url": "ftp://example"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = call(
        &h.app,
        Method::DELETE,
        &format!("/api/v1/webhooks/{}", hook["id"]),
        &auth,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, _, log) = call(
        &h.app,
        Method::GET,
        "/api/v1/audit?search=Weak%20LTE",
        &auth,
        None,
    )
    .await;
    assert_eq!(log.as_array().map(Vec::len), Some(2), "{log}");
}

#[tokio::test]
async fn a_device_s_readings_stream_live_over_a_websocket() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let h = harness().await;
    let ingest = platform::telemetry::Ingest::new(h.store.clone());
    let app = api::app_with(
        h.store.clone(),
        api::ApiOptions {
            ingest: Some(ingest.clone()),
            ..Default::default()
        },
    );
    let admin = format!("Bearer {}", login(&app, "admin", &h.admin_password).await);
    let auth = [("authorization", admin.as_str())];
    create_model(&app, &auth).await;
    call_csv(
        &app,
        "/api/v1/devices/import",
        &auth,
        "serial,mac,model\nW1,00:11:22:33:99:01,311-a1\nW2,00:11:22:33:99:02,311-a1\n",
    )
    .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await;
    });
    let request = |token: Option<&str>| {
        let mut r = format!("ws://{addr}/api/v1/devices/1/live")
            .into_client_request()
            .expect("request");
        if let Some(t) = token {
            r.headers_mut()
                .insert("authorization", t.parse().expect("header"));
        }
        r
    };
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    assert!(
        tokio_tungstenite::client_async(request(None), stream)
            .await
            .is_err(),
        "no login, no stream"
    );
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut socket, _) = tokio_tungstenite::client_async(request(Some(&admin)), stream)
        .await
        .expect("websocket");
    let cpu = |ts: i64, usage: f64| {
        device_protocol::Reading::Cpu(device_protocol::Cpu {
            v: device_protocol::VERSION,
            ts,
            usage_percent: usage,
            cores: 2,
        })
        .to_json()
    };
    // Give the server a moment to subscribe after the upgrade.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let now = store::now_millis();
    ingest
        .handle("dwr/311-a1/00-11-22-33-99-02/hardware/cpu", &cpu(now, 11.0))
        .await;
    ingest
        .handle(
            "dwr/311-a1/00-11-22-33-99-01/hardware/cpu",
            &cpu(now + 1, 42.5),
        )
        .await;
    let message = tokio::time::timeout(std::time::Duration::from_secs(5), socket.next())
        .await
        .expect("a reading in time")
        .expect("open")
        .expect("message");
    let reading: Value = serde_json::from_str(message.to_text().expect("text")).expect("json");
    assert_eq!(
        reading,
        json!({"metric": "cpu.usage_percent", "ts": now + 1, "value": 42.5}),
        "only this device's readings"
    );
}

#[tokio::test]
async fn devices_are_labelled_in_bulk_all_or_nothing() {
    let h = harness().await;
    let admin = format!("Bearer {}", login(&h.app, "admin", &h.admin_password).await);
    let auth = [("authorization", admin.as_str())];
    create_model(&h.app, &auth).await;
    let csv = "name,serial,mac,model,labels\n\
               a,S1,00:11:22:55:00:01,311-a1,pilot\n\
               b,S2,00:11:22:55:00:02,311-a1,\n\
               c,S3,00:11:22:55:00:03,311-a1,\n";
    let (status, _, record) = call_csv(&h.app, "/api/v1/devices/import", &auth, csv).await;
    assert_eq!(status, StatusCode::OK, "{record}");
    let (_, _, page) = call(
        &h.app,
        Method::GET,
        "/api/v1/devices?sort=name",
        &auth,
        None,
    )
    .await;
    let ids: Vec<i64> = page["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| d["id"].as_i64().expect("id"))
        .collect();

    let (status, _, body) = call(
        &h.app,
        Method::POST,
        "/api/v1/devices/labels",
        &auth,
        Some(json!({"device_ids": [ids[0], ids[1]], "add": ["harbour"], "remove": ["pilot"]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["changed"], 2);
    let (_, _, page) = call(
        &h.app,
        Method::GET,
        "/api/v1/devices?label=harbour&sort=name",
        &auth,
        None,
    )
    .await;
    let labelled: Vec<(&str, &Value)> = page["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| (d["name"].as_str().expect("name"), &d["labels"]))
        .collect();
    assert_eq!(
        labelled,
        [("a", &json!(["harbour"])), ("b", &json!(["harbour"]))]
    );

    // A bad label names its field; an unknown device changes nothing.
    let (status, _, problem) = call(
        &h.app,
        Method::POST,
        "/api/v1/devices/labels",
        &auth,
        Some(json!({"device_ids": [ids[2]], "add": ["a,b"]})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["errors"][0]["field"], "add", "{problem}");
    let (status, _, _) = call(
        &h.app,
        Method::POST,
        "/api/v1/devices/labels",
        &auth,
        Some(json!({"device_ids": [ids[2], 999_999], "add": ["night"]})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, _, device) = call(
        &h.app,
        Method::GET,
        &format!("/api/v1/devices/{}", ids[2]),
        &auth,
        None,
    )
    .await;
    assert_eq!(device["labels"], json!([]));
}

#[tokio::test]
async fn statistics_history_gives_the_daily_snapshots() {
    let h = harness().await;
    let admin = format!("Bearer {}", login(&h.app, "admin", &h.admin_password).await);
    let auth = [("authorization", admin.as_str())];
    // Looking at the counters takes today's snapshot.
    let (status, _, _) = call(&h.app, Method::GET, "/api/v1/statistics", &auth, None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, days) = call(
        &h.app,
        Method::GET,
        "/api/v1/statistics/history?days=7",
        &auth,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{days}");
    let days = days.as_array().expect("days");
    assert_eq!(days.len(), 1);
    assert_eq!(days[0]["day"].as_i64().expect("day") % 86_400_000, 0);
    assert_eq!(days[0]["users"], 1);
    let (status, _, problem) = call(
        &h.app,
        Method::GET,
        "/api/v1/statistics/history?days=0",
        &auth,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["errors"][0]["field"], "days");
}

#[tokio::test]
async fn the_console_is_served_outside_the_api() {
    let h = harness().await;
    let get = |uri: &'static str| {
        let app = h.app.clone();
        async move {
            let response = app
                .oneshot(Request::get(uri).body(Body::empty()).expect("request"))
                .await
                .expect("response");
            let headers = response.headers().clone();
            let body = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            (headers, String::from_utf8_lossy(&body).into_owned())
        }
    };
    // The app's own routes get the page; the page loads only from this server.
    let (headers, page) = get("/devices/42").await;
    assert!(page.contains("<title>Telemark</title>"), "{page}");
    let csp = headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .expect("csp");
    assert!(csp.contains("default-src 'self'"), "{csp}");
    // Unknown API paths stay problem documents, not the page.
    let (headers, body) = get("/api/v1/nothing-here").await;
    assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
    assert!(body.contains("no such endpoint"), "{body}");
}

#[tokio::test]
async fn metrics_need_an_operator_and_the_cookie_is_secure_behind_https() {
    let h = harness().await;
    let app = api::app_with(
        h.store.clone(),
        api::ApiOptions {
            metrics: Some(std::sync::Arc::new(|| "telemark_up 1\n".to_owned())),
            secure_cookie: true,
            ..Default::default()
        },
    );
    let (status, headers, body) = call(
        &app,
        Method::POST,
        "/api/v1/session",
        &[],
        Some(json!({"username": "admin", "password": h.admin_password})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let cookie = headers[header::SET_COOKIE].to_str().expect("cookie");
    assert!(cookie.contains("; Secure"), "{cookie}");
    let admin = format!("Bearer {}", body["token"].as_str().expect("token"));
    // A stranger, then a customer's engineer: no figures of the whole platform.
    let (status, _, _) = call(&app, Method::GET, "/metrics", &[], None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let auth = [("authorization", admin.as_str())];
    let (_, _, me) = call(&app, Method::GET, "/api/v1/session", &auth, None).await;
    let (_, _, acme) = call(
        &app,
        Method::POST,
        "/api/v1/organisations",
        &auth,
        Some(json!({"parent_id": me["organisation_id"], "name": "Acme"})),
    )
    .await;
    let (status, _, user) = call(
        &app,
        Method::POST,
        "/api/v1/users",
        &auth,
        Some(json!({"organisation_id": acme["id"], "username": "acme-eng", "password": "engineer-pass-1", "role": "engineer"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{user}");
    let eng = format!(
        "Bearer {}",
        login(&app, "acme-eng", "engineer-pass-1").await
    );
    let (status, _, _) = call(
        &app,
        Method::GET,
        "/metrics",
        &[("authorization", eng.as_str())],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let request = Request::builder()
        .uri("/metrics")
        .header("authorization", admin.as_str())
        .body(Body::empty())
        .expect("request");
    let response = app.clone().oneshot(request).await.expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let text = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(&text[..], b"telemark_up 1\n");
}

#[tokio::test]
async fn health_reports_a_background_task_that_panicked() {
    let h = harness().await;
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let supervisor = platform::supervisor::Supervisor::new(stopped.clone());
    let steady = stopped.clone();
    supervisor.spawn("retention", move || {
        let mut stop = steady.clone();
        async move {
            let _ = stop.wait_for(|s| *s).await;
        }
    });
    supervisor.spawn("ingest", || async {
        panic!("index out of bounds in the ingest")
    });
    let app = api::app_with(
        h.store.clone(),
        api::ApiOptions {
            supervisor: Some(supervisor.clone()),
            ..Default::default()
        },
    );
    let mut body = Value::Null;
    for _ in 0..50 {
        let (status, _, b) = call(&app, Method::GET, "/api/v1/health", &[], None).await;
        body = b;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(body["status"], "degraded", "{body}");
    let ingest = body["tasks"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["name"] == "ingest"))
        .expect("ingest listed")
        .clone();
    assert!(ingest["restarts"].as_u64() >= Some(1), "{ingest}");
    assert!(
        ingest["last_failure"].is_null(),
        "a stranger sees no internals"
    );
    let admin = format!("Bearer {}", login(&app, "admin", &h.admin_password).await);
    let (_, _, body) = call(
        &app,
        Method::GET,
        "/api/v1/health",
        &[("authorization", admin.as_str())],
        None,
    )
    .await;
    let why = body["tasks"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["name"] == "ingest"))
        .map(|t| t["last_failure"].clone())
        .unwrap_or_default();
    assert!(
        why.as_str()
            .is_some_and(|w| w.contains("index out of bounds")),
        "{body}"
    );
}

#[tokio::test]
async fn an_import_rejection_names_nothing_of_another_tenant() {
    let h = harness().await;
    let admin = format!("Bearer {}", login(&h.app, "admin", &h.admin_password).await);
    let auth = [("authorization", admin.as_str())];
    let (_, _, me) = call(&h.app, Method::GET, "/api/v1/session", &auth, None).await;
    create_model(&h.app, &auth).await;
    let mut orgs = Vec::new();
    for name in ["Acme Harbour Works", "Globex"] {
        let (_, _, org) = call(
            &h.app,
            Method::POST,
            "/api/v1/organisations",
            &auth,
            Some(json!({"parent_id": me["organisation_id"], "name": name})),
        )
        .await;
        orgs.push(org["id"].clone());
    }
    let (status, _, record) = call_csv(
        &h.app,
        "/api/v1/devices/import",
        &auth,
        "serial,mac,model,name,organisation\nACME-1,00:11:22:66:00:01,311-a1,acme-secret-router,Acme Harbour Works\n",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{record}");
    let (status, _, _) = call(
        &h.app,
        Method::POST,
        "/api/v1/users",
        &auth,
        Some(json!({"organisation_id": orgs[1], "username": "globex-admin", "password": "globex-password", "role": "integrator-admin"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let globex = format!(
        "Bearer {}",
        login(&h.app, "globex-admin", "globex-password").await
    );
    let (status, _, record) = call_csv(
        &h.app,
        "/api/v1/devices/import?partial=true",
        &[("authorization", globex.as_str())],
        "serial,mac,model\nACME-1,00:11:22:66:00:99,311-a1\nG-2,00:11:22:66:00:01,311-a1\nG-3,00:11:22:66:00:03,311-a1\n",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{record}");
    assert_eq!(record["rows_accepted"], 1, "{record}");
    let text = record["rejections"].to_string();
    for secret in [
        "acme-secret-router",
        "Acme",
        &format!("organisation {}", orgs[0]),
    ] {
        assert!(!text.contains(secret), "{secret:?} leaked: {text}");
    }
    assert!(text.contains("already registered"), "{text}");
}

/// rmqtt's `rmqtt-auth-http`, VerneMQ's webhooks and mosquitto-go-auth's
/// HTTP backend, each with the request bodies its documentation shows,
/// decide as the registry does: the device's own secret and client id, its
/// own topics, nothing of another device's; the platform's own login.
#[tokio::test]
async fn the_auth_hooks_of_rmqtt_vernemq_and_mosquitto_go_auth_decide_as_the_registry_does() {
    let (app, secret, _, dir) = hook_fixture().await;
    let store = store::Store::open_data_dir(dir.path())
        .await
        .expect("store");
    let internal = platform::device_access::internal_secret(&store)
        .await
        .expect("internal secret");
    let mac = "00-11-22-33-44-55";
    let own = format!("dwr/311-a1/{mac}/hardware/lte");
    let other = "dwr/311-a1/00-11-22-33-44-56/hardware/lte";
    let bearer = [("authorization", "Bearer hook-secret")];
    let form = "application/x-www-form-urlencoded";
    let json = "application/json";

    // rmqtt: form bodies by default, JSON when configured; the bearer
    // secret from `http_headers`.
    let auth = |body: String, content_type: &'static str| {
        let app = app.clone();
        async move {
            post_raw(
                &app,
                "/api/v1/mqtt/rmqtt/auth",
                &bearer,
                content_type,
                &body,
            )
            .await
        }
    };
    let (status, _, body) = auth(
        format!("clientid={mac}&username={mac}&password={secret}&ipaddr=127.0.0.1"),
        form,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let answer: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        (answer["result"].as_str(), answer["superuser"].as_bool()),
        (Some("allow"), Some(false))
    );
    // The device's whole ACL with its login: its own tree, nothing else.
    assert_eq!(
        answer["acl"],
        json!([
            {"permission": "allow", "action": "all", "topic": format!("dwr/311-a1/{mac}/#")},
            {"permission": "deny", "action": "all", "topic": "#"},
        ])
    );
    let (_, _, body) = auth(
        json!({"clientid": mac, "username": mac, "password": "wrong"}).to_string(),
        json,
    )
    .await;
    assert!(body.contains("\"deny\""), "{body}");
    let (_, _, body) = auth(
        format!("clientid=telemark-ingest-a&username=telemark-platform&password={internal}"),
        form,
    )
    .await;
    let answer: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        (answer["result"].as_str(), answer["superuser"].as_bool()),
        (Some("allow"), Some(true)),
        "the platform's own login: {body}"
    );
    let acl = |access: u8, username: &str, topic: &str| {
        let (app, body) = (
            app.clone(),
            format!(
                "access={access}&username={username}&clientid={username}&ipaddr=127.0.0.1&topic={topic}"
            ),
        );
        async move { post_raw(&app, "/api/v1/mqtt/rmqtt/acl", &bearer, form, &body).await }
    };
    let (_, headers, body) = acl(2, mac, &own).await;
    assert_eq!(body, "allow");
    assert_eq!(
        headers.get("x-cache").and_then(|v| v.to_str().ok()),
        Some("300000")
    );
    assert_eq!(acl(2, mac, other).await.2, "deny");
    assert_eq!(acl(1, mac, "dwr/#").await.2, "deny");
    assert_eq!(
        acl(1, "telemark-platform", "$share/telemark/dwr/#").await.2,
        "allow"
    );
    let (status, _, _) = post_raw(
        &app,
        "/api/v1/mqtt/rmqtt/acl",
        &[],
        form,
        "access=2&username=x&topic=t",
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "no bearer, no answer");

    // VerneMQ: one endpoint, the hook in a header, the secret in the URL.
    let vernemq = |hook: &'static str, body: Value| {
        let app = app.clone();
        async move {
            let (status, headers, text) = post_raw(
                &app,
                "/api/v1/mqtt/vernemq/hook-secret",
                &[("vernemq-hook", hook)],
                json,
                &body.to_string(),
            )
            .await;
            (
                status,
                headers,
                serde_json::from_str::<Value>(&text).unwrap_or(Value::Null),
            )
        }
    };
    let register = |password: &str| {
        json!({"peer_addr": "127.0.0.1", "peer_port": 8888, "username": mac, "password": password,
               "mountpoint": "", "client_id": mac, "clean_session": false})
    };
    assert_eq!(
        vernemq("auth_on_register", register(&secret)).await.2,
        json!({"result": "ok"})
    );
    assert_eq!(
        vernemq("auth_on_register", register("wrong")).await.2,
        json!({"result": {"error": "not_allowed"}})
    );
    let mut m5 = register(&secret);
    m5["clean_start"] = json!(true);
    m5["properties"] = json!({});
    assert_eq!(vernemq("auth_on_register_m5", m5).await.2["result"], "ok");
    let publish = |topic: &str| {
        json!({"username": mac, "client_id": mac, "mountpoint": "", "qos": 1, "topic": topic,
               "payload": "aGVsbG8=", "retain": false})
    };
    let (_, headers, answer) = vernemq("auth_on_publish", publish(&own)).await;
    assert_eq!(answer, json!({"result": "ok"}));
    assert_eq!(
        headers
            .get(header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok()),
        Some("max-age=300")
    );
    assert_eq!(
        vernemq("auth_on_publish", publish(other)).await.2["result"]["error"],
        "not_allowed"
    );
    let subscribe = json!({"client_id": mac, "mountpoint": "", "username": mac,
        "topics": [{"topic": format!("dwr/311-a1/{mac}/tasks/+"), "qos": 1}, {"topic": "dwr/#", "qos": 1}]});
    let (_, _, answer) = vernemq("auth_on_subscribe", subscribe.clone()).await;
    assert_eq!(answer["topics"][0]["qos"], 1);
    assert_eq!(
        answer["topics"][1]["qos"], 128,
        "refused in a 3.1.1 SUBACK: {answer}"
    );
    let (_, _, answer) = vernemq("auth_on_subscribe_m5", subscribe).await;
    assert_eq!(
        answer["modifiers"]["topics"][1]["qos"], 135,
        "Not authorized: {answer}"
    );
    let (status, _, _) = post_raw(
        &app,
        "/api/v1/mqtt/vernemq/guessed",
        &[("vernemq-hook", "auth_on_register")],
        json,
        &register(&secret).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        vernemq("on_deliver", json!({})).await.0,
        StatusCode::BAD_REQUEST
    );

    // mosquitto-go-auth: the status decides; JSON or form parameters.
    let go = |path: &'static str, content_type: &'static str, body: String| {
        let app = app.clone();
        async move {
            let (status, _, text) = post_raw(
                &app,
                &format!("/api/v1/mqtt/go-auth/hook-secret/{path}"),
                &[],
                content_type,
                &body,
            )
            .await;
            (status, text)
        }
    };
    let user = |password: &str| {
        json!({"username": mac, "password": password, "clientid": mac}).to_string()
    };
    let (status, body) = go("user", json, user(&secret)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("\"ok\":true"), "{body}");
    assert_eq!(
        go("user", json, user("wrong")).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        go(
            "user",
            form,
            format!("username={mac}&password={secret}&clientid={mac}")
        )
        .await
        .0,
        StatusCode::OK
    );
    assert_eq!(
        go("superuser", json, json!({"username": mac}).to_string())
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        go(
            "superuser",
            json,
            json!({"username": "telemark-platform"}).to_string()
        )
        .await
        .0,
        StatusCode::OK,
        "the platform's own clients skip the ACL"
    );
    let acl = |topic: &str, acc: Value| {
        json!({"username": mac, "clientid": mac, "topic": topic, "acc": acc}).to_string()
    };
    assert_eq!(go("acl", json, acl(&own, json!(2))).await.0, StatusCode::OK);
    assert_eq!(
        go("acl", json, acl(other, json!(2))).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        go("acl", json, acl("dwr/#", json!(4))).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        go(
            "acl",
            form,
            format!("username={mac}&clientid={mac}&topic=dwr/311-a1/{mac}/tasks/9&acc=1")
        )
        .await
        .0,
        StatusCode::OK,
        "a request delivered to the device"
    );
    assert_eq!(
        go("acl", json, acl(&own, json!(7))).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        post_raw(
            &app,
            "/api/v1/mqtt/go-auth/guessed/user",
            &[],
            json,
            &user(&secret)
        )
        .await
        .0,
        StatusCode::UNAUTHORIZED
    );
}
