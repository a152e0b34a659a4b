//! `telemark firmware upload`: an image into the platform's repository from
//! a build machine, streamed from disk with a progress bar, never read
//! whole into memory.

use anyhow::{Context, bail};
use futures_util::StreamExt;

use crate::tunnel::{PlatformAccess, answer};

#[derive(Debug, clap::Args)]
pub(crate) struct UploadArgs {
    /// The image file.
    pub file: std::path::PathBuf,
    /// Its semantic version, e.g. 2.1.0.
    #[arg(long)]
    pub version: String,
    /// A model it is for: its topic segment (311-a1), name or id; repeat for several.
    #[arg(long = "model", required = true)]
    pub models: Vec<String>,
    /// Devices below this version are not offered it.
    #[arg(long)]
    pub min_version: Option<String>,
    /// Release notes.
    #[arg(long, default_value = "")]
    pub notes: String,
    /// A vendor's detached ed25519 signature (base64url) over the image
    /// digest; without it the platform signs the image with its own key.
    #[arg(long)]
    pub signature: Option<String>,
    /// The organisation that owns it (default: the token's own).
    #[arg(long)]
    pub organisation: Option<i64>,
    #[command(flatten)]
    pub access: PlatformAccess,
}

pub(crate) async fn upload(args: UploadArgs) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (http, base, auth) = args.access.client();
    let models: serde_json::Value = answer(
        http.get(format!("{base}/api/v1/device-models"))
            .header("Authorization", &auth)
            .send()
            .await
            .context("reaching the platform")?,
    )
    .await?;
    let mut model_ids = Vec::new();
    for wanted in &args.models {
        let found = models.as_array().into_iter().flatten().find(|m| {
            m["topic_segment"].as_str() == Some(wanted.as_str())
                || m["name"].as_str() == Some(wanted.as_str())
                || m["id"].as_i64().map(|id| id.to_string()).as_deref() == Some(wanted.as_str())
        });
        match found.and_then(|m| m["id"].as_i64()) {
            Some(id) => model_ids.push(id.to_string()),
            None => bail!("no device model {wanted:?} (by topic segment, name or id)"),
        }
    }
    let file = tokio::fs::File::open(&args.file)
        .await
        .with_context(|| format!("{}", args.file.display()))?;
    let size = file.metadata().await?.len();
    let file_name = args
        .file
        .file_name()
        .and_then(|n| n.to_str())
        .context("the file's name is not UTF-8")?
        .to_owned();
    let mut query = vec![
        ("version", args.version.clone()),
        ("model_ids", model_ids.join(",")),
        ("file_name", file_name.clone()),
        ("notes", args.notes.clone()),
    ];
    query.extend(args.min_version.clone().map(|v| ("min_version", v)));
    query.extend(args.signature.clone().map(|s| ("signature", s)));
    query.extend(
        args.organisation
            .map(|o| ("organisation_id", o.to_string())),
    );
    let bar = indicatif::ProgressBar::new(size).with_style(
        indicatif::ProgressStyle::with_template(
            "{msg} {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(file_name);
    let counted = bar.clone();
    let body =
        tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024).inspect(move |chunk| {
            if let Ok(chunk) = chunk {
                counted.inc(chunk.len() as u64);
            }
        });
    let response = http
        .post(format!("{base}/api/v1/firmware"))
        .header("Authorization", &auth)
        .header("Content-Type", "application/octet-stream")
        .header("Content-Length", size)
        .query(&query)
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .context("uploading")?;
    let kept = answer(response).await;
    bar.finish_and_clear();
    let kept = kept?;
    println!(
        "Image {} stored: version {}, {} bytes, sha256 {}, signed by {}",
        kept["id"],
        kept["version"].as_str().unwrap_or_default(),
        kept["size"],
        kept["sha256"].as_str().unwrap_or_default(),
        kept["signed_by"].as_str().unwrap_or_default()
    );
    Ok(())
}
