//! All user output. Data (tables, `--json`) goes to stdout; messages and progress to
//! stderr, lowercase, values in backticks, readable without colour (`NO_COLOR` honoured).
//!
//! Every text shown to a human passes through [`escape`] (`hoist_core::text`) here:
//! names, paths and log lines come from app files, archives and apps, and a raw ESC or
//! bidi override in them could rewrite the terminal or disguise what is shown. JSON is data and is left as serde
//! writes it. A closed stdout ends the command quietly (see `exit::report`); a closed
//! stderr only loses the messages, never panics.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{IsTerminal, Write};

pub use hoist_core::text::escape;

/// Whether stderr is a terminal that may get colour and progress bars.
pub fn fancy() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

fn paint(code: &str, text: &str) -> String {
    if fancy() {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

/// One message on stderr. A closed or failing stderr loses the message: there is nowhere
/// left to report that, and a panic would hide the command's real result. Progress bars
/// step aside while it is written, so a message never lands in the middle of one.
fn say(text: &str) {
    bars().suspend(|| {
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(text.as_bytes());
    });
}

/// Every progress bar of the command, drawn together on stderr (indicatif draws nothing
/// when stderr is not a terminal).
fn bars() -> &'static indicatif::MultiProgress {
    static BARS: std::sync::OnceLock<indicatif::MultiProgress> = std::sync::OnceLock::new();
    BARS.get_or_init(|| {
        indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::stderr())
    })
}

/// A progress bar for long work; removed from the terminal when dropped. Hidden unless
/// stderr is a terminal, and always with `--json` (whose stdout is for machines, and
/// whose stderr must stay quiet too).
pub struct Progress(indicatif::ProgressBar);

/// How a bar counts.
pub enum Unit {
    /// Bytes sent, with the rate and the time left.
    Bytes,
    /// Steps of a known list (`setup`'s actions).
    Steps,
}

impl Progress {
    /// A bar from 0 to `total`.
    pub fn bar(total: u64, unit: Unit, msg: &str, json: bool) -> Progress {
        if json || !std::io::stderr().is_terminal() {
            return Progress(indicatif::ProgressBar::hidden());
        }
        let template = match unit {
            Unit::Bytes => "{prefix:>12.green.bold} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            Unit::Steps => "{prefix:>12.green.bold} {msg} [{bar:30}] {pos}/{len}",
        };
        let style = indicatif::ProgressStyle::with_template(template)
            .expect("the templates above are valid")
            .progress_chars("=> ");
        let pb = indicatif::ProgressBar::new(total)
            .with_style(style)
            .with_prefix("Progress")
            .with_message(escape(msg).into_owned());
        Progress(bars().add(pb))
    }

    /// Work whose size nobody knows in advance (a backup the agent takes): a spinner and
    /// the time it has taken so far, never an invented percentage.
    pub fn spinner(msg: &str, json: bool) -> Progress {
        if json || !std::io::stderr().is_terminal() {
            return Progress(indicatif::ProgressBar::hidden());
        }
        let style = indicatif::ProgressStyle::with_template(
            "{prefix:>12.green.bold} {spinner} {msg} {elapsed}",
        )
        .expect("the template above is valid");
        let pb = bars().add(
            indicatif::ProgressBar::new_spinner()
                .with_style(style)
                .with_prefix("Working")
                .with_message(escape(msg).into_owned()),
        );
        pb.enable_steady_tick(std::time::Duration::from_millis(120));
        Progress(pb)
    }

    /// Sets the position (bytes or steps done).
    pub fn set(&self, done: u64) {
        self.0.set_position(done)
    }

    /// A function that counts one step done and names it, for another task.
    pub fn stepper(&self) -> impl Fn(&str) + Send + Sync + 'static {
        let pb = self.0.clone();
        move |msg| {
            pb.inc(1);
            pb.set_message(escape(msg).into_owned());
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.0.finish_and_clear();
        bars().remove(&self.0);
    }
}

/// `error: …` on stderr.
pub fn error(msg: &str) {
    say(&format!("{} {}\n", paint("1;31", "error:"), escape(msg)));
}

/// `warning: …` on stderr.
pub fn warn(msg: &str) {
    say(&format!("{} {}\n", paint("1;33", "warning:"), escape(msg)));
}

/// `hint: …` on stderr, after an error the user can fix.
pub fn hint(msg: &str) {
    say(&format!("{} {}\n", paint("1;36", "hint:"), escape(msg)));
}

/// A status line on stderr: a right-aligned verb and a message, as cargo does.
pub fn status(verb: &str, msg: &str) {
    say(&format!(
        "{} {}\n",
        paint("1;32", &format!("{verb:>12}")),
        escape(msg)
    ));
}

/// Text already formatted for a human (a diagnostic), on stderr as is.
pub fn diagnostic(text: &str) {
    let text = escape(text);
    if text.ends_with('\n') {
        say(&text);
    } else {
        say(&format!("{text}\n"));
    }
}

/// A line of data on stdout.
pub fn data(line: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", escape(line))
}

/// One JSON document (or one line of a JSON stream) on stdout.
pub fn json(value: &impl serde::Serialize) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    writeln!(out)
}

/// A table on stdout: a header row and aligned columns.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|c| escape(c).into_owned()).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = std::io::stdout().lock();
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_string()
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for row in &rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}
