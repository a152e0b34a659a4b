//! CSV device import against a real SQLite store: good, bad and mixed files,
//! line numbers and reasons, all-or-nothing and partial.

use platform::import::{ImportError, import_csv};
use store::{DeviceQuery, NewDeviceModel, Scope, Store};

async fn setup() -> (Store, Scope, Scope, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_data_dir(dir.path()).await.expect("store");
    let op = store.create_operator("Ops").await.expect("operator");
    let root = store.scope_of(op.id).await.expect("scope");
    let si = store
        .create_organisation(&root, op.id, "Acme Integration")
        .await
        .expect("si");
    let other = store
        .create_organisation(&root, op.id, "Rival")
        .await
        .expect("other");
    let si_scope = store.scope_of(si.id).await.expect("scope");
    store
        .create_organisation(&si_scope, si.id, "Harbour Logistics")
        .await
        .expect("customer");
    let rival_scope = store.scope_of(other.id).await.expect("scope");
    store
        .create_device_model(&NewDeviceModel {
            name: "DWM-311-A1".into(),
            vendor: "D-Link".into(),
            hardware_revision: "A1".into(),
            topic_segment: "311-a1".into(),
            description: "LTE router".into(),
        })
        .await
        .expect("model");
    (store, si_scope, rival_scope, dir)
}

const MIXED: &str = "\
name,model,serial,mac,imei,iccid,organisation,labels
gw-1,DWM-311-A1,SN001,00:11:22:33:44:01,490154203237518,8944500102198304826,,pilot;north
gw-2,311-a1,SN002,00-11-22-33-44-02,,,Harbour Logistics,
gw-3,DWM-311-A1,SN003,00:11:22:33:44,,,,
gw-4,DWM-311-A1,SN004,00:11:22:33:44:04,490154203237519,,,
gw-5,DWM-999,SN005,00:11:22:33:44:05,,,,
gw-6,DWM-311-A1,SN001,00:11:22:33:44:06,,,,
gw-7,DWM-311-A1,SN007,00:11:22:33:44:07,,,Rival,
";

#[tokio::test]
async fn a_good_file_is_imported_and_recorded() {
    let (store, scope, _, _dir) = setup().await;
    let csv = "serial,mac,model\nA1,001122334455,311-a1\nA2,00:11:22:33:44:56,DWM-311-A1\n";
    let record = import_csv(
        &store,
        &scope,
        "alice",
        "erp-2026-11.csv",
        csv.as_bytes(),
        false,
    )
    .await
    .expect("import");
    assert_eq!((record.rows_accepted, record.rows_rejected), (2, 0));
    let page = store
        .devices(
            &scope,
            &DeviceQuery {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .expect("list");
    let macs: Vec<&str> = page.devices.iter().map(|d| d.mac.as_str()).collect();
    assert_eq!(macs, ["00-11-22-33-44-55", "00-11-22-33-44-56"]);
    assert_eq!(
        page.devices[0].name, "A1",
        "the serial names a device without a name"
    );
    let again = store
        .import_record(&scope, record.id)
        .await
        .expect("record");
    assert_eq!(
        (again.actor.as_str(), again.source_name.as_str()),
        ("alice", "erp-2026-11.csv")
    );
}

#[tokio::test]
async fn a_mixed_file_is_all_or_nothing_with_every_bad_line_named() {
    let (store, scope, _, _dir) = setup().await;
    let record = import_csv(
        &store,
        &scope,
        "alice",
        "mixed.csv",
        MIXED.as_bytes(),
        false,
    )
    .await
    .expect("import");
    assert_eq!(record.rows_accepted, 0, "nothing half-written");
    let lines: Vec<(i64, &str)> = record
        .rejections
        .iter()
        .map(|r| (r.line, r.reason.as_str()))
        .collect();
    assert_eq!(lines.len(), 5, "{lines:#?}");
    assert_eq!(lines[0].0, 4);
    assert!(lines[0].1.contains("MAC address"));
    assert_eq!(lines[1].0, 5);
    assert!(lines[1].1.contains("IMEI") && lines[1].1.contains("check digit"));
    assert_eq!(lines[2].0, 6);
    assert!(lines[2].1.contains("unknown device model"));
    assert_eq!(lines[3].0, 7);
    assert!(lines[3].1.contains("repeats line 2"));
    // Another tenant's organisation is unknown here.
    assert_eq!(lines[4].0, 8);
    assert!(lines[4].1.contains("unknown organisation"));
    assert_eq!(store.count_devices(&scope).await.expect("count"), 0);
    let stored = store
        .import_record(&scope, record.id)
        .await
        .expect("record");
    assert_eq!(stored.rejections, record.rejections);
}

#[tokio::test]
async fn partial_accepts_the_good_rows() {
    let (store, scope, rival, _dir) = setup().await;
    let record = import_csv(&store, &scope, "alice", "mixed.csv", MIXED.as_bytes(), true)
        .await
        .expect("import");
    assert_eq!((record.rows_accepted, record.rows_rejected), (2, 5));
    let devices = store
        .devices(
            &scope,
            &DeviceQuery {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .expect("list");
    let first = &devices.devices[0];
    assert_eq!(first.labels, "pilot,north");
    assert_eq!(first.imei.as_deref(), Some("490154203237518"));
    assert_ne!(
        devices.devices[1].organisation_id, first.organisation_id,
        "row 3 went to the customer"
    );
    // The rival sees neither the devices nor the record.
    assert_eq!(store.count_devices(&rival).await.expect("count"), 0);
    assert!(store.import_record(&rival, record.id).await.is_err());
    // Importing the same file again: the registered ones are rejected by serial.
    let again = import_csv(&store, &scope, "alice", "mixed.csv", MIXED.as_bytes(), true)
        .await
        .expect("import");
    assert_eq!(again.rows_accepted, 0);
    assert!(
        again
            .rejections
            .iter()
            .any(|r| r.line == 2 && r.reason.contains("already registered"))
    );
}

#[tokio::test]
async fn a_file_that_is_not_an_import_is_refused_whole() {
    let (store, scope, _, _dir) = setup().await;
    let missing = import_csv(
        &store,
        &scope,
        "a",
        "x.csv",
        "name,serial\nx,y\n".as_bytes(),
        false,
    )
    .await;
    assert!(
        matches!(missing, Err(ImportError::MissingColumns(ref c)) if c == "model, mac"),
        "{missing:?}"
    );
    let unknown = import_csv(
        &store,
        &scope,
        "a",
        "x.csv",
        "serial,mac,model,colour\n".as_bytes(),
        false,
    )
    .await;
    assert!(matches!(unknown, Err(ImportError::UnknownColumn(ref c)) if c == "colour"));
    let empty = import_csv(&store, &scope, "a", "x.csv", "".as_bytes(), false).await;
    assert!(empty.is_err());
}

#[tokio::test]
async fn an_erp_json_batch_names_its_bad_items_by_position() {
    use platform::import::{ImportFormat, import};
    let (store, scope, _, _dir) = setup().await;
    let batch = br#"{"devices": [
        {"serial": "E1", "mac": "00:11:22:33:55:01", "model": "DWM-311-A1", "labels": ["erp"]},
        {"serial": "E2", "mac": "bad", "model": "DWM-311-A1"},
        {"serial": "E3", "mac": "00:11:22:33:55:03", "model": "DWM-311-A1", "colour": "red"},
        {"serial": "E4", "mac": "00:11:22:33:55:04", "model": "DWM-311-A1", "organisation": "Harbour Logistics"}
    ]}"#;
    let record = import(
        &store,
        &scope,
        "erp",
        "erp-batch-17.json",
        batch,
        ImportFormat::ErpJson,
        true,
    )
    .await
    .expect("import");
    assert_eq!((record.rows_accepted, record.rows_rejected), (2, 2));
    assert_eq!(record.rejections[0].line, 2);
    assert!(record.rejections[0].reason.contains("MAC address"));
    assert_eq!(record.rejections[1].line, 3);
    assert!(record.rejections[1].reason.contains("colour"));
    let not_a_batch = import(
        &store,
        &scope,
        "erp",
        "x.json",
        b"[1,2]",
        ImportFormat::ErpJson,
        true,
    )
    .await;
    assert!(matches!(not_a_batch, Err(ImportError::Json(_))));
}
