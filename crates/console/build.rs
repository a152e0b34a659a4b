//! Builds the console (`web/`) with Vite into `OUT_DIR/console`, which the
//! crate embeds. npm runs only when the console's sources change.
//!
//! `TELEMARK_CONSOLE_DIST=DIR` embeds an already built console instead (a
//! packaging build without Node.js). Without npm and without that variable
//! the binary gets a page that says how to build the console, so the Rust
//! side still builds and tests on a machine without Node.js.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::{env, fs};

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let web = manifest.join("../../web");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets it")).join("console");
    println!("cargo:rerun-if-env-changed=TELEMARK_CONSOLE_DIST");
    for input in [
        "src",
        "public",
        "index.html",
        "package.json",
        "package-lock.json",
        "vite.config.ts",
        "tsconfig.json",
    ] {
        println!("cargo:rerun-if-changed={}", web.join(input).display());
    }
    if out.exists() {
        fs::remove_dir_all(&out).expect("clear the previous console build");
    }

    if let Some(dist) = env::var_os("TELEMARK_CONSOLE_DIST") {
        copy_dir(Path::new(&dist), &out);
        return;
    }
    if Command::new("npm").arg("--version").output().is_err() {
        println!(
            "cargo:warning=npm not found: the console is not built (install Node.js and npm, then build again)"
        );
        fs::create_dir_all(&out).expect("create the console directory");
        fs::write(
            out.join("index.html"),
            "<!doctype html><meta charset=utf-8><title>Telemark</title>\
             <p>The console was not built: this binary was compiled without Node.js. \
             Install Node.js and npm and build again; the API is at <a href=/api/openapi.json>/api/openapi.json</a>.",
        )
        .expect("write the placeholder page");
        return;
    }
    let installed = web.join("node_modules/.package-lock.json");
    if is_older(&installed, &web.join("package-lock.json")) {
        npm(&web, &["ci", "--no-audit", "--no-fund", "--loglevel=error"]);
    }
    let out_arg = out.to_str().expect("OUT_DIR is UTF-8");
    npm(
        &web,
        &[
            "run",
            "build",
            "--silent",
            "--",
            "--outDir",
            out_arg,
            "--emptyOutDir",
            "--logLevel",
            "warn",
        ],
    );
}

/// True when `a` is missing or older than `b`.
fn is_older(a: &Path, b: &Path) -> bool {
    let modified = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    match (modified(a), modified(b)) {
        (Some(a), Some(b)) => a < b,
        _ => true,
    }
}

fn npm(dir: &Path, args: &[&str]) {
    let status = Command::new("npm")
        .args(args)
        .current_dir(dir)
        .status()
        .expect("run npm");
    assert!(
        status.success(),
        "npm {} failed in {}",
        args.join(" "),
        dir.display()
    );
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create the console directory");
    for entry in fs::read_dir(from).expect("read TELEMARK_CONSOLE_DIST") {
        let entry = entry.expect("read TELEMARK_CONSOLE_DIST");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).expect("copy the console");
        }
    }
}
