//! `hoist init [--force]`: writes a commented starter `hoist.toml` for the project in the
//! current directory. Detection and the template live in `hoist_config::init`; this file
//! writes the result (never over an existing file without `--force`) and says what it did.

use std::io::Write;

use anyhow::Context;

use crate::exit::{Exit, WithExit};
use crate::output;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Overwrite an existing hoist.toml
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let dir = std::env::current_dir().context("cannot read the current directory")?;
    let path = dir.join(hoist_config::FILE_NAME);
    if path.exists() && !args.force {
        return Err(WithExit {
            exit: Exit::Usage,
            error: anyhow::anyhow!("`{}` already exists", hoist_config::FILE_NAME),
            hint: Some("pass `--force` to replace it, or check it with `hoist config`".to_string()),
        }
        .into());
    }
    let detected = hoist_config::init::detect(&dir)?;
    let text = hoist_config::init::starter(&detected);
    // A starter that does not validate would be a bug here, not the user's problem.
    if let Err(e) = hoist_config::parse_str(hoist_config::FILE_NAME, &text) {
        anyhow::bail!(
            "the starter file does not validate:\n{}",
            hoist_config::render(e.diagnostics())
        );
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if args.force {
        options.create(true).truncate(true);
    } else {
        // create_new: a file appearing since the check above is not overwritten.
        options.create_new(true);
    }
    let mut file = options
        .open(&path)
        .with_context(|| format!("cannot create `{}`", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write `{}`", path.display()))?;
    output::status("Detected", &detected.summary);
    output::status(
        "Created",
        &format!("`{}` for app `{}`", hoist_config::FILE_NAME, detected.app),
    );
    output::status(
        "Next",
        "review it, then run `hoist config` to see the resolved configuration",
    );
    output::status(
        "Then",
        "`hoist deploy` (set secrets first with `hoist secrets set`)",
    );
    Ok(())
}
