//! What the store's benchmarks start from: an operator, the DWM-311-A1
//! model and `devices` devices of it, inserted 5,000 at a time.

use store::{NewDevice, NewDeviceModel, Scope, Store};

/// The MAC of the `n`th seeded device.
pub fn mac(n: usize) -> String {
    format!(
        "02-00-00-{:02x}-{:02x}-{:02x}",
        n >> 16,
        (n >> 8) & 0xff,
        n & 0xff
    )
}

pub async fn seed(
    store: &Store,
    devices: usize,
) -> Result<(Scope, Vec<i64>), Box<dyn std::error::Error>> {
    let op = store.create_operator("Ops").await?;
    let root = store.scope_of(op.id).await?;
    let model = store
        .create_device_model(&NewDeviceModel {
            name: "DWM-311-A1".into(),
            vendor: "D-Link".into(),
            hardware_revision: "A1".into(),
            topic_segment: "311-a1".into(),
            description: String::new(),
        })
        .await?;
    let mut ids = Vec::with_capacity(devices);
    for chunk in (0..devices).collect::<Vec<_>>().chunks(5000) {
        let batch: Vec<NewDevice> = chunk
            .iter()
            .map(|&n| NewDevice {
                organisation_id: op.id,
                model_id: model.id,
                name: format!("d{n}"),
                serial: format!("S{n:08}"),
                mac: mac(n),
                imei: None,
                iccid: None,
                labels: vec![],
            })
            .collect();
        ids.extend(store.insert_devices(&root, &batch).await?);
    }
    Ok((root, ids))
}
