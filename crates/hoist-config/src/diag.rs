//! Diagnostics: a problem found in an app file, located by file, line and column, and
//! rendered the way rustc and cargo render theirs (the source line, a caret underline, a
//! `hint:`). This module owns the text format, which tests pin; it does not decide what
//! is a problem.

use std::fmt;
use std::ops::Range;

use hoist_core::text::{escape, escape_char, needs_escape};
use serde::Serialize;

/// Whether a diagnostic stops the app file from loading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem, located and ready to show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// The file as the user named it (`hoist.toml`, `deploy/hoist.staging.toml`).
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    pub message: String,
    pub hint: Option<String>,
    /// The whole line the problem is on, without its newline.
    pub source_line: String,
    /// How many characters of `source_line` to underline, from `column`.
    pub width: usize,
}

/// The text of one app file and the name to show for it.
#[derive(Debug, Clone)]
pub(crate) struct SourceFile {
    pub name: String,
    pub text: String,
}

/// Where in which file: a byte range into `SourceFile::text`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Loc {
    pub file: usize,
    pub span: Range<usize>,
}

impl Diagnostic {
    pub(crate) fn new(
        files: &[SourceFile],
        severity: Severity,
        at: &Loc,
        message: String,
        hint: Option<String>,
    ) -> Diagnostic {
        let file = &files[at.file];
        let text = file.text.as_str();
        let start = floor_char_boundary(text, at.span.start.min(text.len()));
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
        let source_line = text[line_start..line_end]
            .trim_end_matches('\r')
            .to_string();
        let line = text[..start].matches('\n').count() + 1;
        let column = text[line_start..start].chars().count() + 1;
        // The underline stops at the end of the line: a span covering a whole table
        // would otherwise run on for many lines.
        let end = floor_char_boundary(text, at.span.end.clamp(start, line_end));
        let width = text[start..end].trim_end().chars().count().max(1);
        Diagnostic {
            severity,
            file: file.name.clone(),
            line,
            column,
            message,
            hint,
            source_line,
            width,
        }
    }
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    while i > 0 && !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl fmt::Display for Diagnostic {
    /// ```text
    /// error: unknown key `replica` in `services.web`
    ///   --> hoist.toml:12:1
    ///    |
    /// 12 | replica = 2
    ///    | ^^^^^^^
    ///    = hint: did you mean `replicas`?
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let number = self.line.to_string();
        let pad = " ".repeat(number.len());
        writeln!(f, "{label}: {}", escape(&self.message))?;
        writeln!(f, "{pad}--> {}:{}:{}", self.file, self.line, self.column)?;
        writeln!(f, "{pad} |")?;
        // The line is shown escaped (a bidi override in a value would reorder it), and
        // the caret counts each escaped character at its shown width.
        writeln!(f, "{number} | {}", escape(&self.source_line))?;
        let shown = |c: char| {
            if needs_escape(c) {
                escape_char(c).chars().count()
            } else {
                1
            }
        };
        // Tabs before the column keep their width so that the caret lines up.
        let lead: String = self
            .source_line
            .chars()
            .take(self.column - 1)
            .map(|c| {
                if c == '\t' {
                    "\t".to_string()
                } else {
                    " ".repeat(shown(c))
                }
            })
            .collect();
        let width: usize = self
            .source_line
            .chars()
            .skip(self.column - 1)
            .take(self.width)
            .map(shown)
            .sum();
        writeln!(f, "{pad} | {lead}{}", "^".repeat(width.max(1)))?;
        if let Some(hint) = &self.hint {
            writeln!(f, "{pad} = hint: {}", escape(hint))?;
        }
        Ok(())
    }
}

/// Renders diagnostics one after another, separated by blank lines.
pub fn render(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The closest of `candidates` to `input`, if it is close enough to be a likely typo.
pub(crate) fn did_you_mean<'a>(
    input: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (input.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| {
            (
                strsim::damerau_levenshtein(&input.to_ascii_lowercase(), &c.to_ascii_lowercase()),
                c,
            )
        })
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_and_renders() {
        let files = vec![SourceFile {
            name: "hoist.toml".into(),
            text: "app = \"x\"\n\n[services.web]\nreplica = 2\n".into(),
        }];
        let start = files[0].text.find("replica").unwrap();
        let d = Diagnostic::new(
            &files,
            Severity::Error,
            &Loc {
                file: 0,
                span: start..start + 7,
            },
            "unknown key `replica` in `services.web`".into(),
            Some("did you mean `replicas`?".into()),
        );
        assert_eq!((d.line, d.column, d.width), (4, 1, 7));
        expect_test::expect![[r#"
            error: unknown key `replica` in `services.web`
             --> hoist.toml:4:1
              |
            4 | replica = 2
              | ^^^^^^^
              = hint: did you mean `replicas`?
        "#]]
        .assert_eq(&d.to_string());
    }

    #[test]
    fn column_counts_characters_and_clamps_to_the_line() {
        let files = vec![SourceFile {
            name: "f".into(),
            text: "name = \"žluť\" # x\nnext\n".into(),
        }];
        let start = files[0].text.find('#').unwrap();
        let d = Diagnostic::new(
            &files,
            Severity::Warning,
            &Loc {
                file: 0,
                span: start..files[0].text.len(),
            },
            "m".into(),
            None,
        );
        assert_eq!((d.line, d.column, d.width), (1, 15, 3));
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("replica", ["replicas", "roles"]),
            Some("replicas")
        );
        assert_eq!(
            did_you_mean("servics", ["services", "secrets"]),
            Some("services")
        );
        assert_eq!(did_you_mean("Command", ["command"]), Some("command"));
        assert_eq!(did_you_mean("zzz", ["command", "roles"]), None);
    }
}
