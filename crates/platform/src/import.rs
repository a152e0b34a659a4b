//! Device import from CSV: a header row naming the columns, one device per
//! line. Every bad line is rejected with its line number and reason; the
//! batch is then written all-or-nothing, or the good rows with `partial`.

use std::collections::HashMap;
use std::io::Read;

use store::{ImportBatch, ImportRecord, NewDevice, Rejection, Scope, Store, StoreError};

use crate::identifiers::{normalize_mac, validate_iccid, validate_imei};

/// A file that cannot be read as an import at all (as opposed to bad rows).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("line 1: the header lacks the column(s) {0}")]
    MissingColumns(String),
    #[error(
        "line 1: unknown column {0:?} (known: name, model, serial, mac, imei, iccid, organisation, labels)"
    )]
    UnknownColumn(String),
    #[error("the file is empty")]
    Empty,
    #[error("not CSV: {0}")]
    Csv(#[from] csv::Error),
    #[error("not an ERP batch ({{\"devices\": [...]}}): {0}")]
    Json(String),
    #[error("not an ERP key batch ({{\"license_keys\": [\"KEY\", ...]}}): {0}")]
    KeysJson(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What names mean in an import: the organisations and device models the
/// importer can use.
#[derive(Debug, Clone, Default)]
pub struct ImportContext {
    /// Where rows without an `organisation` column go.
    pub default_organisation: i64,
    /// Organisation name (lower-case) or id (as text) → id.
    pub organisations: HashMap<String, i64>,
    /// Model name or topic segment (lower-case) → id.
    pub models: HashMap<String, i64>,
}

/// Rows that passed, with their line numbers, and rows that did not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedImport {
    pub rows: Vec<(i64, NewDevice)>,
    pub rejected: Vec<Rejection>,
}

const KNOWN: [&str; 8] = [
    "name",
    "model",
    "serial",
    "mac",
    "imei",
    "iccid",
    "organisation",
    "labels",
];
const REQUIRED: [&str; 3] = ["model", "serial", "mac"];

/// Parses and validates a CSV import without touching the database.
pub fn parse_csv(input: impl Read, ctx: &ImportContext) -> Result<ParsedImport, ImportError> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(input);
    let headers: Vec<String> = reader
        .headers()?
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    if headers.iter().all(|h| h.is_empty()) {
        return Err(ImportError::Empty);
    }
    if let Some(unknown) = headers.iter().find(|h| !KNOWN.contains(&h.as_str())) {
        return Err(ImportError::UnknownColumn(unknown.clone()));
    }
    let missing: Vec<&str> = REQUIRED
        .iter()
        .copied()
        .filter(|r| !headers.iter().any(|h| h == r))
        .collect();
    if !missing.is_empty() {
        return Err(ImportError::MissingColumns(missing.join(", ")));
    }
    let column = |name: &str| headers.iter().position(|h| h == name);
    let (c_name, c_model, c_serial, c_mac) = (
        column("name"),
        column("model"),
        column("serial"),
        column("mac"),
    );
    let (c_imei, c_iccid, c_org, c_labels) = (
        column("imei"),
        column("iccid"),
        column("organisation"),
        column("labels"),
    );

    let mut parsed = ParsedImport::default();
    let mut seen_serial: HashMap<String, i64> = HashMap::new();
    let mut seen_mac: HashMap<String, i64> = HashMap::new();
    for record in reader.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line() as i64);
                parsed.rejected.push(Rejection {
                    line,
                    reason: format!("unreadable row: {e}"),
                });
                continue;
            }
        };
        let line = record.position().map_or(0, |p| p.line() as i64);
        if record.iter().all(str::is_empty) {
            continue;
        }
        let field = |c: Option<usize>| c.and_then(|i| record.get(i)).unwrap_or("").to_owned();
        let row = validate_row(
            ctx,
            &field(c_name),
            &field(c_model),
            &field(c_serial),
            &field(c_mac),
            &field(c_imei),
            &field(c_iccid),
            &field(c_org),
            &field(c_labels),
        );
        accept_row(&mut parsed, &mut seen_serial, &mut seen_mac, line, row);
    }
    Ok(parsed)
}

#[allow(clippy::too_many_arguments)]
fn validate_row(
    ctx: &ImportContext,
    name: &str,
    model: &str,
    serial: &str,
    mac: &str,
    imei: &str,
    iccid: &str,
    organisation: &str,
    labels: &str,
) -> Result<NewDevice, String> {
    let mut problems = Vec::new();
    let model_id = ctx.models.get(&model.to_ascii_lowercase()).copied();
    if model.is_empty() {
        problems.push("model is empty".to_owned());
    } else if model_id.is_none() {
        problems.push(format!("unknown device model {model:?}"));
    }
    if serial.is_empty() {
        problems.push("serial is empty".to_owned());
    }
    let mac = normalize_mac(mac).map_err(|e| e.to_string());
    let imei = (!imei.is_empty()).then(|| validate_imei(imei).map_err(|e| e.to_string()));
    let iccid = (!iccid.is_empty()).then(|| validate_iccid(iccid).map_err(|e| e.to_string()));
    let organisation_id = if organisation.is_empty() {
        Some(ctx.default_organisation)
    } else {
        ctx.organisations
            .get(&organisation.to_ascii_lowercase())
            .copied()
    };
    if organisation_id.is_none() {
        problems.push(format!("unknown organisation {organisation:?}"));
    }
    if let Some(bad) = labels
        .split([';', '|'])
        .map(str::trim)
        .find(|l| !l.is_empty() && !crate::identifiers::is_valid_label(l))
    {
        problems.push(format!(
            "label {bad:?} is not a label: at most 64 characters, no comma"
        ));
    }
    for result in [&mac]
        .into_iter()
        .chain(imei.as_ref())
        .chain(iccid.as_ref())
    {
        if let Err(e) = result {
            problems.push(e.clone());
        }
    }
    match (problems.is_empty(), model_id, organisation_id, mac) {
        (true, Some(model_id), Some(organisation_id), Ok(mac)) => Ok(NewDevice {
            organisation_id,
            model_id,
            name: if name.is_empty() {
                serial.to_owned()
            } else {
                name.to_owned()
            },
            serial: serial.to_owned(),
            mac,
            imei: imei.and_then(Result::ok),
            iccid: iccid.and_then(Result::ok),
            labels: labels
                .split([';', '|'])
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect(),
        }),
        _ => Err(problems.join("; ")),
    }
}

/// One device of an ERP JSON batch: `{"devices": [ {...}, ... ]}`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ErpDevice {
    #[serde(default)]
    name: String,
    model: String,
    serial: String,
    mac: String,
    #[serde(default)]
    imei: Option<String>,
    #[serde(default)]
    iccid: Option<String>,
    #[serde(default)]
    organisation: Option<serde_json::Value>,
    #[serde(default)]
    labels: Vec<String>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ErpBatch {
    devices: Vec<serde_json::Value>,
}

/// Parses and validates an ERP JSON batch. A rejection's `line` is the
/// device's position in the `devices` array, counted from 1.
pub fn parse_erp_json(input: &[u8], ctx: &ImportContext) -> Result<ParsedImport, ImportError> {
    let batch: ErpBatch =
        serde_json::from_slice(input).map_err(|e| ImportError::Json(e.to_string()))?;
    let mut parsed = ParsedImport::default();
    let mut seen_serial: HashMap<String, i64> = HashMap::new();
    let mut seen_mac: HashMap<String, i64> = HashMap::new();
    for (index, value) in batch.devices.into_iter().enumerate() {
        let item = index as i64 + 1;
        let device: ErpDevice = match serde_json::from_value(value) {
            Ok(d) => d,
            Err(e) => {
                parsed.rejected.push(Rejection {
                    line: item,
                    reason: e.to_string(),
                });
                continue;
            }
        };
        let organisation = match device.organisation {
            None | Some(serde_json::Value::Null) => String::new(),
            Some(serde_json::Value::String(s)) => s,
            Some(other) => other.to_string(),
        };
        let row = validate_row(
            ctx,
            &device.name,
            &device.model,
            &device.serial,
            &device.mac,
            device.imei.as_deref().unwrap_or(""),
            device.iccid.as_deref().unwrap_or(""),
            &organisation,
            &device.labels.join(";"),
        );
        accept_row(&mut parsed, &mut seen_serial, &mut seen_mac, item, row);
    }
    Ok(parsed)
}

/// Adds a validated row, or its rejection, and catches repeats in the batch.
fn accept_row(
    parsed: &mut ParsedImport,
    seen_serial: &mut HashMap<String, i64>,
    seen_mac: &mut HashMap<String, i64>,
    line: i64,
    row: Result<NewDevice, String>,
) {
    match row {
        Err(reason) => parsed.rejected.push(Rejection { line, reason }),
        Ok(device) => {
            if let Some(first) = seen_serial.get(&device.serial) {
                parsed.rejected.push(Rejection {
                    line,
                    reason: format!("serial {} repeats line {first}", device.serial),
                });
            } else if let Some(first) = seen_mac.get(&device.mac) {
                parsed.rejected.push(Rejection {
                    line,
                    reason: format!("MAC {} repeats line {first}", device.mac),
                });
            } else {
                seen_serial.insert(device.serial.clone(), line);
                seen_mac.insert(device.mac.clone(), line);
                parsed.rows.push((line, device));
            }
        }
    }
}

/// Builds the import context for a scope from the store: its organisations
/// (by name and id) and every device model (by name and topic segment).
pub async fn context_for(
    store: &Store,
    scope: &Scope,
    default_organisation: i64,
) -> Result<ImportContext, StoreError> {
    let mut ctx = ImportContext {
        default_organisation,
        ..ImportContext::default()
    };
    for org in store.organisations(scope).await? {
        ctx.organisations
            .insert(org.name.to_ascii_lowercase(), org.id);
        ctx.organisations.insert(org.id.to_string(), org.id);
    }
    for model in store.device_models().await? {
        ctx.models.insert(model.name.to_ascii_lowercase(), model.id);
        ctx.models
            .insert(model.topic_segment.to_ascii_lowercase(), model.id);
    }
    Ok(ctx)
}

/// The two import formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportFormat {
    Csv,
    ErpJson,
}

/// Parses, validates and imports a CSV file into `scope`, and records it.
pub async fn import_csv(
    store: &Store,
    scope: &Scope,
    actor: &str,
    source_name: &str,
    input: impl Read,
    partial: bool,
) -> Result<ImportRecord, ImportError> {
    let mut bytes = Vec::new();
    let mut input = input;
    input
        .read_to_end(&mut bytes)
        .map_err(|e| ImportError::Json(e.to_string()))?;
    import(
        store,
        scope,
        actor,
        source_name,
        &bytes,
        ImportFormat::Csv,
        partial,
    )
    .await
}

/// Parses, validates and imports a batch in either format, and records it.
pub async fn import(
    store: &Store,
    scope: &Scope,
    actor: &str,
    source_name: &str,
    input: &[u8],
    format: ImportFormat,
    partial: bool,
) -> Result<ImportRecord, ImportError> {
    let ctx = context_for(store, scope, scope.organisation_id).await?;
    let parsed = match format {
        ImportFormat::Csv => parse_csv(input, &ctx)?,
        ImportFormat::ErpJson => parse_erp_json(input, &ctx)?,
    };
    Ok(store
        .import_devices(
            scope,
            ImportBatch {
                actor: actor.to_owned(),
                source_name: source_name.to_owned(),
                partial,
                rows: parsed.rows,
                rejected: parsed.rejected,
            },
        )
        .await?)
}
