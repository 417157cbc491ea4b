//! `hoist build`, `hoist verify`, `hoist inspect`: the release artifact from the app
//! file's `[build]` section, and its checks. The format and every check live in
//! `hoist-artifact`; this file runs them and renders the result.

use std::path::{Path, PathBuf};

use anyhow::Context;
use hoist_artifact::{BuildOptions, Limits, Manifest};

use super::config::{load, ConfigArgs};
use crate::exit::{with_exit, with_hint, Exit};
use crate::output;

#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub file: ConfigArgs,
    /// Where to write the artifact [default: `.hoist/<app>-<release>.tar.zst` in the project]
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    pub output: Option<PathBuf>,
    /// Print the result as one JSON document
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The artifact to check
    pub artifact: PathBuf,
    #[arg(long)]
    pub json: bool,
}

/// What `hoist build --json` prints.
#[derive(serde::Serialize)]
struct Built<'a> {
    app: &'a str,
    release: &'a str,
    path: String,
    bytes: u64,
    files: usize,
    commit: Option<&'a str>,
    dirty: bool,
}

/// Builds the artifact and returns its path and manifest (also used by `hoist deploy`).
pub fn build_release(
    file: &ConfigArgs,
    output_path: Option<&Path>,
) -> anyhow::Result<(PathBuf, Manifest)> {
    let loaded = load(file)?;
    let spec = &loaded.spec;
    let root = loaded.files[0]
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let root = if root.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        root
    };
    if let Some(command) = &spec.build.command {
        output::status("Running", &format!("`{command}`"));
        hoist_artifact::run_build_command(command, &root, |line| {
            output::diagnostic(&format!("  | {line}"))
        })
        .map_err(|e| {
            if let hoist_artifact::BuildError::CommandFailed { last_lines, .. } = &e {
                for line in last_lines {
                    output::diagnostic(&format!("  | {line}"));
                }
            }
            with_exit(Exit::Failed, e)
        })?;
    }
    let opts = BuildOptions {
        root: root.clone(),
        app: spec.app.clone(),
        include: spec.build.include.clone(),
        exclude: spec.build.exclude.clone(),
        hoist_version: env!("CARGO_PKG_VERSION").to_string(),
        config_hash: loaded.resolved_hash.clone(),
        source_date_epoch: hoist_artifact::source_date_epoch_from_env()?,
        limits: Limits::default(),
    };
    let dir = root.join(".hoist");
    let tmp_out = match output_path {
        Some(p) => p.to_path_buf(),
        None => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create `{}`", dir.display()))?;
            dir.join(format!("{}.building.tar.zst", spec.app))
        }
    };
    let out = hoist_artifact::build(&opts, &tmp_out).map_err(|e| match e.hint() {
        Some(h) => with_hint(e, h),
        None => anyhow::Error::from(e),
    })?;
    let path = match output_path {
        Some(p) => p.to_path_buf(),
        None => {
            let named = dir.join(format!(
                "{}-{}.tar.zst",
                spec.app,
                out.manifest.release().as_str()
            ));
            std::fs::rename(&out.path, &named)
                .with_context(|| format!("cannot write `{}`", named.display()))?;
            named
        }
    };
    for pattern in &out.unmatched {
        output::warn(&format!(
            "include pattern `{pattern}` matches nothing; the release has no such files"
        ));
    }
    if out.manifest.build().dirty {
        output::warn(
            "the project has uncommitted changes: the release records its commit as `dirty`",
        );
    }
    let s = out.manifest.summary();
    output::status(
        "Built",
        &format!(
            "`{}` release `{}`: {} files, {} bytes → `{}` ({} bytes)",
            spec.app,
            out.manifest.release().as_str(),
            s.files,
            s.total_bytes,
            path.display(),
            out.size
        ),
    );
    Ok((path, out.manifest))
}

pub fn run_build(args: BuildArgs) -> anyhow::Result<()> {
    let (path, manifest) = build_release(&args.file, args.output.as_deref())?;
    if args.json {
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        output::json(&Built {
            app: manifest.app(),
            release: manifest.release().as_str(),
            path: path.display().to_string(),
            bytes: size,
            files: manifest.summary().files,
            commit: manifest.build().commit.as_deref(),
            dirty: manifest.build().dirty,
        })?;
    } else {
        output::data(manifest.release().as_str())?;
    }
    Ok(())
}

pub fn run_verify(args: VerifyArgs) -> anyhow::Result<()> {
    let manifest = hoist_artifact::verify(&args.artifact, &Limits::default())
        .with_context(|| format!("`{}` does not verify", args.artifact.display()))?;
    let s = manifest.summary();
    if args.json {
        output::json(&serde_json::json!({
            "ok": true,
            "app": manifest.app(),
            "release": manifest.release().as_str(),
            "files": s.files,
            "bytes": s.total_bytes,
        }))?;
    } else {
        output::status(
            "Verified",
            &format!(
                "`{}` release `{}`: {} entries match the manifest",
                manifest.app(),
                manifest.release().as_str(),
                manifest.entries().len()
            ),
        );
    }
    Ok(())
}

/// Python packages vendored into the release: every `<dir>/NAME-VERSION.dist-info` (what
/// `pip install --target <dir>` writes) under a top-level directory, as (dir, name, version).
pub fn vendored(manifest: &Manifest) -> Vec<(String, String, String)> {
    let mut out: Vec<(String, String, String)> = manifest
        .entries()
        .iter()
        .filter_map(|e| {
            let (dir, rest) = e.path.split_once('/')?;
            let info = rest.strip_suffix(".dist-info")?;
            if info.contains('/') {
                return None;
            }
            let (name, version) = info.rsplit_once('-')?;
            Some((dir.to_string(), name.to_string(), version.to_string()))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

pub fn run_inspect(args: VerifyArgs) -> anyhow::Result<()> {
    let manifest = hoist_artifact::read_manifest(&args.artifact, &Limits::default())
        .with_context(|| format!("cannot read the manifest of `{}`", args.artifact.display()))?;
    let s = manifest.summary();
    let b = manifest.build();
    let vendor = vendored(&manifest);
    if args.json {
        let full: serde_json::Value =
            serde_json::from_slice(&manifest.to_json()).context("the manifest is not JSON")?;
        output::json(&serde_json::json!({
            "app": manifest.app(),
            "release": manifest.release().as_str(),
            "summary": { "files": s.files, "directories": s.directories, "symlinks": s.symlinks, "bytes": s.total_bytes },
            "vendored": vendor.iter().map(|(dir, name, version)| serde_json::json!({"dir": dir, "name": name, "version": version})).collect::<Vec<_>>(),
            "manifest": full,
        }))?;
        return Ok(());
    }
    let rows = vec![
        vec!["app".into(), manifest.app().to_string()],
        vec!["release".into(), manifest.release().as_str().to_string()],
        vec![
            "commit".into(),
            format!(
                "{}{}",
                b.commit.as_deref().unwrap_or("(not a git tree)"),
                if b.dirty { " (dirty)" } else { "" }
            ),
        ],
        vec!["commit time".into(), b.commit_time.to_string()],
        vec!["hoist".into(), b.hoist_version.clone()],
        vec!["app file hash".into(), b.config_hash.clone()],
        vec![
            "files".into(),
            format!("{} ({} bytes)", s.files, s.total_bytes),
        ],
        vec!["directories".into(), s.directories.to_string()],
        vec!["symlinks".into(), s.symlinks.to_string()],
    ];
    let mut rows = rows;
    for (dir, name, version) in &vendor {
        rows.push(vec![
            "vendored".into(),
            format!("{name} {version} ({dir}/)"),
        ]);
    }
    output::table(&["field", "value"], &rows)?;
    Ok(())
}
