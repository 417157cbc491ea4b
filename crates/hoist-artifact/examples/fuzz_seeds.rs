//! Writes seed inputs for the fuzz targets (`fuzz/seeds/{manifest,unpack}`): a small
//! project built into an artifact, its manifest, and the same archive uncompressed.
//! Usage: `cargo run -p hoist-artifact --example fuzz_seeds -- fuzz/seeds`.

use std::fs;
use std::path::PathBuf;

use hoist_artifact::{build, BuildOptions, Limits};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::args().nth(1).ok_or("usage: fuzz_seeds DIR")?);
    let src = tempfile::tempdir()?;
    let root = src.path();
    fs::create_dir_all(root.join("static/css"))?;
    fs::write(root.join("app.py"), "print('hello')\n")?;
    fs::write(root.join("static/css/site.css"), "body { color: red }\n")?;
    std::os::unix::fs::symlink("static/css/site.css", root.join("site.css"))?;
    let opts = BuildOptions {
        root: root.to_path_buf(),
        app: "seed".into(),
        include: vec![],
        exclude: vec![],
        hoist_version: "0.1.0".into(),
        config_hash: "00".into(),
        source_date_epoch: Some(0),
        limits: Limits::default(),
    };
    let work = tempfile::tempdir()?;
    let built = build(&opts, &work.path().join("seed.tar.zst"))?;
    fs::create_dir_all(out.join("manifest"))?;
    fs::create_dir_all(out.join("unpack"))?;
    fs::write(out.join("manifest/valid.json"), built.manifest.to_json())?;
    let compressed = fs::read(&built.path)?;
    fs::write(
        out.join("unpack/valid.tar"),
        zstd::decode_all(&compressed[..])?,
    )?;
    fs::write(out.join("unpack/valid.tar.zst"), compressed)?;
    Ok(())
}
