//! `hoist completions SHELL` and `hoist docs gen|check`: everything under `docs/` that is
//! derived from the code — the app-file reference (`hoist-config::reference`), the host
//! config reference (the fields of the agent's serde types), the CLI reference and man
//! pages (the clap tree, so every command present at build time is in them), and shell
//! completions. `docs check` regenerates in memory and names every file that differs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::CommandFactory;

use crate::exit::{Exit, Reported};
use crate::output;

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to print completions for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, clap::Args)]
pub struct DocsArgs {
    #[command(subcommand)]
    action: DocsAction,
}

#[derive(Debug, clap::Subcommand)]
enum DocsAction {
    /// Write the generated references, man pages and completions under DIR
    Gen {
        /// The docs directory [default: `docs`]
        #[arg(default_value = "docs")]
        dir: PathBuf,
    },
    /// Fail (exit 1) when a generated file under DIR differs from what this hoist generates
    Check {
        #[arg(default_value = "docs")]
        dir: PathBuf,
    },
    /// Install the man pages and bash completion into the system (what `hoist setup` runs)
    Install {
        /// Where to install under [default: `/`]
        #[arg(long, default_value = "/")]
        prefix: PathBuf,
    },
}

pub fn run_completions(args: CompletionsArgs) -> anyhow::Result<()> {
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut crate::Cli::command(), "hoist", &mut out);
    use std::io::Write;
    std::io::stdout().lock().write_all(&out)?;
    Ok(())
}

pub fn run(args: DocsArgs) -> anyhow::Result<()> {
    match args.action {
        DocsAction::Gen { dir } => {
            for (rel, body) in generated()? {
                let path = dir.join(&rel);
                if std::fs::read(&path).ok().as_deref() == Some(body.as_slice()) {
                    continue;
                }
                write(&path, &body)?;
                output::status("Wrote", &path.display().to_string());
            }
            Ok(())
        }
        DocsAction::Check { dir } => {
            let mut stale = Vec::new();
            for key in hoist_config::reference::undocumented() {
                stale.push(format!(
                    "app-file key `{key}` has no entry in hoist-config/src/reference.rs"
                ));
            }
            for key in hoist_config::reference::stale() {
                stale.push(format!(
                    "reference.rs documents `{key}`, which the app file refuses"
                ));
            }
            for key in undocumented_host_keys() {
                stale.push(format!(
                    "host-config key `{key}` has no entry in cmd/agent.rs HOST_CONFIG_DOCS"
                ));
            }
            let files = generated()?;
            for (rel, body) in &files {
                if std::fs::read(dir.join(rel)).ok().as_deref() != Some(body.as_slice()) {
                    stale.push(rel.clone());
                }
            }
            // A generated directory holding a file this hoist no longer makes (a removed
            // command's man page) is stale too.
            for sub in ["man"] {
                for e in std::fs::read_dir(dir.join(sub))
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    let rel = format!("{sub}/{}", e.file_name().to_string_lossy());
                    if !files.contains_key(&rel) {
                        stale.push(format!("{rel} (no longer generated)"));
                    }
                }
            }
            if stale.is_empty() {
                output::status("Current", &format!("{} generated files", files.len()));
                return Ok(());
            }
            for s in &stale {
                output::error(&format!("docs in `{}` are not current: {s}", dir.display()));
            }
            output::hint("run `scripts/gen-docs.sh` (or `hoist docs gen`) and commit the result");
            Err(Reported(Exit::Failed).into())
        }
        DocsAction::Install { prefix } => {
            let (changed, unchanged) = install(&prefix)?;
            output::status(
                "Installed",
                &format!("man pages and bash completion: {changed} changed, {unchanged} unchanged"),
            );
            // The last line is for `hoist setup`, which reports the step.
            output::data(if changed > 0 { "changed" } else { "unchanged" })?;
            Ok(())
        }
    }
}

/// Installs every man page under `PREFIX/usr/local/share/man/man1` and the bash
/// completion as `PREFIX/usr/local/share/bash-completion/completions/hoist` (bash-completion
/// looks there, through `XDG_DATA_DIRS`); files already equal are left alone. Returns (changed, unchanged).
pub fn install(prefix: &Path) -> anyhow::Result<(usize, usize)> {
    let mut files: Vec<(PathBuf, Vec<u8>)> = man_pages()?
        .into_iter()
        .map(|(name, body)| (prefix.join("usr/local/share/man/man1").join(name), body))
        .collect();
    let mut bash = Vec::new();
    clap_complete::generate(
        clap_complete::Shell::Bash,
        &mut crate::Cli::command(),
        "hoist",
        &mut bash,
    );
    files.push((
        prefix.join("usr/local/share/bash-completion/completions/hoist"),
        bash,
    ));
    let (mut changed, mut unchanged) = (0, 0);
    for (path, body) in files {
        if std::fs::read(&path).ok().as_deref() == Some(body.as_slice()) {
            unchanged += 1;
            continue;
        }
        write(&path, &body)?;
        changed += 1;
    }
    Ok((changed, unchanged))
}

/// Temp file, fsync, rename: a reader never sees half a page.
fn write(path: &Path, body: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create `{}`", parent.display()))?;
    let tmp = parent.join(format!(
        ".{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("cannot write `{}`", tmp.display()))?;
    f.write_all(body)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write `{}`", path.display()))?;
    Ok(())
}

/// Every generated file, by path relative to the docs directory.
fn generated() -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let mut files = BTreeMap::new();
    files.insert(
        "reference/app-file.md".to_string(),
        hoist_config::reference::markdown().into_bytes(),
    );
    files.insert(
        "reference/host-config.md".to_string(),
        host_config_markdown().into_bytes(),
    );
    files.insert("reference/cli.md".to_string(), cli_markdown().into_bytes());
    for (name, body) in man_pages()? {
        files.insert(format!("man/{name}"), body);
    }
    Ok(files)
}

/// Every visible command, depth first, with its full name (`hoist backup verify`).
fn commands() -> Vec<(String, clap::Command)> {
    fn walk(prefix: &str, cmd: &clap::Command, out: &mut Vec<(String, clap::Command)>) {
        for sub in cmd.get_subcommands() {
            if sub.is_hide_set() || sub.get_name() == "help" {
                continue;
            }
            let name = format!("{prefix} {}", sub.get_name());
            out.push((name.clone(), sub.clone()));
            walk(&name, sub, out);
        }
    }
    let mut root = crate::Cli::command();
    root.build();
    let mut out = vec![("hoist".to_string(), root.clone())];
    walk("hoist", &root, &mut out);
    out
}

/// `hoist.1`, `hoist-deploy.1`, `hoist-backup-verify.1`, …
fn man_pages() -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut pages = Vec::new();
    for (name, cmd) in commands() {
        let file = name.replace(' ', "-");
        // clap keeps names as `&'static str`; a docs run makes a few dozen of them once.
        let leaked: &'static str = Box::leak(file.clone().into_boxed_str());
        let cmd = cmd.name(leaked).bin_name(name.clone());
        let mut body = Vec::new();
        clap_mangen::Man::new(cmd)
            .date("")
            .render(&mut body)
            .with_context(|| format!("cannot render the man page of `{name}`"))?;
        pages.push((format!("{file}.1"), body));
    }
    Ok(pages)
}

/// `docs/reference/cli.md`: each command's long help, as `hoist CMD --help` prints it.
fn cli_markdown() -> String {
    let mut s = String::from(
        "# Command-line reference\n\n<!-- Generated by `scripts/gen-docs.sh` (`hoist docs gen`) \
         from the clap definitions; do not edit. -->\n\nEvery command takes `-c FILE` (the app \
         file), `-d DEST` (an overlay) where it reads the app file. Exit codes: 0 success, 1 \
         failed with production unchanged, 2 bad usage or app file, 3 partial failure needing \
         attention (`hoist run` exits with its test command's status). Man pages: `man hoist`, \
         `man hoist-deploy`, … (installed by `hoist setup`). Shell completions: `hoist \
         completions bash|zsh|fish|elvish|powershell`.\n\n",
    );
    for (name, cmd) in commands().iter().skip(1) {
        let about = cmd
            .get_about()
            .map(|a| a.to_string())
            .unwrap_or_default()
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        let _ = writeln!(s, "- [`{name}`](#{}) — {about}", name.replace(' ', "-"));
    }
    s.push('\n');
    for (name, cmd) in commands().into_iter().skip(1) {
        let mut cmd = cmd.bin_name(name.clone()).term_width(100);
        let help = cmd.render_long_help().to_string();
        let _ = writeln!(s, "## `{name}`\n\n```text\n{}\n```\n", help.trim_end());
    }
    s
}

/// The field names of a serde struct, as its derived `Deserialize` declares them.
pub(crate) fn serde_fields<'de, T: serde::Deserialize<'de>>() -> &'static [&'static str] {
    struct Catch(&'static [&'static str]);
    #[derive(Debug)]
    struct Stop;
    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("stop")
        }
    }
    impl std::error::Error for Stop {}
    impl serde::de::Error for Stop {
        fn custom<M: std::fmt::Display>(_: M) -> Stop {
            Stop
        }
    }
    impl<'de> serde::Deserializer<'de> for &mut Catch {
        type Error = Stop;
        fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            self.0 = fields;
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }
    let mut c = Catch(&[]);
    let _ = T::deserialize(&mut c);
    c.0
}

/// `docs/reference/host-config.md`: `/etc/hoist/agent.toml`, from the agent's types.
fn host_config_markdown() -> String {
    let mut s = String::from(
        "# Host config reference (`/etc/hoist/agent.toml`)\n\n<!-- Generated by \
         `scripts/gen-docs.sh` (`hoist docs gen`) from the agent's config types; do not edit. \
         -->\n\nRead by `hoist agent` (or `hoist agent --config FILE`); flags win over it. \
         `hoist setup` writes it once with `proxy = \"0.0.0.0:80\"` and `https = \
         \"0.0.0.0:443\"` and never overwrites it. Relative paths are relative to the file.\n\n\
         | key | type | default | example | meaning |\n|---|---|---|---|---|\n",
    );
    for key in super::agent::host_config_keys() {
        match super::agent::HOST_CONFIG_DOCS.iter().find(|d| d.0 == *key) {
            Some((k, ty, default, example, about)) => {
                let _ = writeln!(s, "| `{k}` | {ty} | {default} | `{example}` | {about} |");
            }
            None => {
                let _ = writeln!(s, "| `{key}` | | | | (undocumented) |");
            }
        }
    }
    s.push_str(
        "\n## `[retention]`\n\nHow long and how many records the agent keeps; older ones are \
         pruned once a minute (`hoist history --verify` still passes).\n\n| key | type | \
         default |\n|---|---|---|\n",
    );
    let defaults = serde_json::to_value(hoist_agent::Retention::default()).unwrap_or_default();
    for key in serde_fields::<hoist_agent::Retention>() {
        let ty = if key.ends_with("_days") {
            "integer (days)"
        } else {
            "integer (records)"
        };
        let _ = writeln!(s, "| `{key}` | {ty} | `{}` |", defaults[key]);
    }
    s
}

/// Host config keys the agent accepts without documentation (for the test).
pub fn undocumented_host_keys() -> Vec<&'static str> {
    super::agent::host_config_keys()
        .iter()
        .copied()
        .filter(|k| !super::agent::HOST_CONFIG_DOCS.iter().any(|d| d.0 == *k))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_host_config_key_is_documented() {
        assert_eq!(undocumented_host_keys(), Vec::<&str>::new());
        assert!(super::super::agent::host_config_keys().contains(&"proxy"));
    }

    #[test]
    fn retention_fields_come_from_its_type() {
        let f = serde_fields::<hoist_agent::Retention>();
        assert!(
            f.contains(&"events_days") && f.contains(&"history_max"),
            "{f:?}"
        );
    }

    #[test]
    fn every_command_has_a_man_page() {
        let pages = man_pages().unwrap();
        for name in [
            "hoist.1",
            "hoist-run.1",
            "hoist-deploy.1",
            "hoist-completions.1",
        ] {
            assert!(pages.iter().any(|(n, _)| n == name), "{name}");
        }
    }
}
