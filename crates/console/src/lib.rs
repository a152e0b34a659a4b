//! The web console's files, embedded at build time (see `build.rs`).

use std::borrow::Cow;

#[derive(rust_embed::RustEmbed)]
#[folder = "$OUT_DIR/console"]
struct Files;

/// One file of the console.
#[derive(Debug)]
pub struct Asset {
    pub bytes: Cow<'static, [u8]>,
    pub content_type: String,
    /// Vite names its bundles by content hash, so they never change.
    pub immutable: bool,
}

/// The file at `path` (no leading slash); `index.html` for a path that
/// names no file, so the console's own routes (`/devices/42`) load the app.
pub fn asset(path: &str) -> Option<Asset> {
    let path = path.trim_start_matches('/');
    if let Some(file) = Files::get(path) {
        return Some(Asset {
            content_type: file.metadata.mimetype().to_owned(),
            bytes: file.data,
            immutable: path.starts_with("assets/"),
        });
    }
    // A missing asset is a 404, not the app: a stale tab asking for an old bundle must fail loudly.
    if path.starts_with("assets/")
        || path
            .rsplit('/')
            .next()
            .is_some_and(|last| last.contains('.'))
    {
        return None;
    }
    Files::get("index.html").map(|file| Asset {
        content_type: "text/html; charset=utf-8".to_owned(),
        bytes: file.data,
        immutable: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_of_the_app_get_the_index_and_missing_files_do_not() {
        let index = asset("/devices/42").expect("index");
        assert!(index.content_type.starts_with("text/html"));
        assert!(!index.immutable);
        assert!(asset("/assets/missing-abc.js").is_none());
        assert!(asset("/favicon-missing.png").is_none());
    }
}
