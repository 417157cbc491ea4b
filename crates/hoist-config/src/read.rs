//! Typed reading of the parsed tree: opening a table (reporting unknown keys with a "did
//! you mean"), and reading strings, integers, booleans, durations, sizes, lists and env
//! maps with errors that say what was expected and what was found. Knows the value
//! forms, not the sections: which keys exist where is `validate`'s business.

use std::collections::BTreeMap;
use std::time::Duration;

use hoist_core::units::{parse_duration, ByteSize};

use crate::diag::{did_you_mean, Diagnostic, Loc, Severity, SourceFile};
use crate::tree::{toml_quote, Key, Node, Value};

/// Collects diagnostics while the tree is walked.
pub(crate) struct Cx<'f> {
    files: &'f [SourceFile],
    pub(crate) diags: Vec<Diagnostic>,
}

impl<'f> Cx<'f> {
    pub(crate) fn new(files: &'f [SourceFile]) -> Cx<'f> {
        Cx {
            files,
            diags: Vec::new(),
        }
    }

    pub(crate) fn error(&mut self, at: &Loc, message: impl Into<String>, hint: Option<String>) {
        let d = Diagnostic::new(self.files, Severity::Error, at, message.into(), hint);
        self.diags.push(d);
    }

    pub(crate) fn warn(&mut self, at: &Loc, message: impl Into<String>, hint: Option<String>) {
        let d = Diagnostic::new(self.files, Severity::Warning, at, message.into(), hint);
        self.diags.push(d);
    }

    pub(crate) fn error_count(&self) -> usize {
        self.diags
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }

    pub(crate) fn loc_text(&self, at: &Loc) -> String {
        let d = Diagnostic::new(self.files, Severity::Error, at, String::new(), None);
        format!("{}:{}:{}", d.file, d.line, d.column)
    }
}

/// A table being read: its entries, its dotted path for messages, and where to point when
/// a required key is missing (the table's own key or header).
pub(crate) struct Tbl<'a> {
    pub(crate) entries: &'a [(Key, Node)],
    pub(crate) path: String,
    pub(crate) at: Loc,
}

impl<'a> Tbl<'a> {
    /// Opens `node` as a table, reporting a wrong type and every unknown key.
    pub(crate) fn open(
        cx: &mut Cx<'_>,
        node: &'a Node,
        path: &str,
        at: &Loc,
        known: &[&str],
    ) -> Option<Tbl<'a>> {
        let Some(entries) = node.as_table() else {
            type_error(cx, node, path, "a table", None);
            return None;
        };
        for (key, _) in entries {
            if known.contains(&key.name.as_str()) {
                continue;
            }
            let message = if path.is_empty() {
                format!("unknown key `{}` at the top level", key.name)
            } else {
                format!("unknown key `{}` in `{path}`", key.name)
            };
            let hint = match did_you_mean(&key.name, known.iter().copied()) {
                Some(s) => format!("did you mean `{s}`?"),
                None => match crate::validate::home_of(&key.name) {
                    Some(home) => format!("`{}` belongs in {home}", key.name),
                    None => format!("expected one of {}", list(known)),
                },
            };
            cx.error(&key.loc, message, Some(hint));
        }
        Some(Tbl {
            entries,
            path: path.to_string(),
            at: at.clone(),
        })
    }

    pub(crate) fn get(&self, key: &str) -> Option<&'a Node> {
        self.entries
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(_, v)| v)
    }

    pub(crate) fn key_loc(&self, key: &str) -> Option<&'a Loc> {
        self.entries
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(k, _)| &k.loc)
    }

    pub(crate) fn path(&self, key: &str) -> String {
        join(&self.path, key)
    }

    pub(crate) fn missing(&self, cx: &mut Cx<'_>, key: &str, hint: Option<String>) {
        let message = if self.path.is_empty() {
            format!("missing key `{key}` at the top level")
        } else {
            format!("missing key `{key}` in `{}`", self.path)
        };
        cx.error(&self.at, message, hint);
    }

    pub(crate) fn str(&self, cx: &mut Cx<'_>, key: &str) -> Option<String> {
        self.get(key).and_then(|n| read_str(cx, n, &self.path(key)))
    }

    /// A string that must be present and not blank.
    pub(crate) fn command(&self, cx: &mut Cx<'_>, key: &str, example: &str) -> Option<String> {
        match self.get(key) {
            None => {
                self.missing(
                    cx,
                    key,
                    Some(format!("add `{key} = {}`", toml_quote(example))),
                );
                None
            }
            Some(n) => {
                let s = read_str(cx, n, &self.path(key))?;
                if s.trim().is_empty() {
                    cx.error(
                        &n.loc,
                        format!("invalid `{}`: the command is empty", self.path(key)),
                        None,
                    );
                    return None;
                }
                Some(s)
            }
        }
    }

    pub(crate) fn uint(&self, cx: &mut Cx<'_>, key: &str, min: u64, max: u64) -> Option<u64> {
        self.get(key)
            .and_then(|n| read_uint(cx, n, &self.path(key), min, max))
    }

    pub(crate) fn bool(&self, cx: &mut Cx<'_>, key: &str) -> Option<bool> {
        let n = self.get(key)?;
        match &n.value {
            Value::Bool(b) => Some(*b),
            Value::Str(s) if s == "true" || s == "false" => {
                type_error(
                    cx,
                    n,
                    &self.path(key),
                    "a boolean",
                    Some(format!("remove the quotes: `{key} = {s}`")),
                );
                None
            }
            _ => {
                type_error(
                    cx,
                    n,
                    &self.path(key),
                    "a boolean (`true` or `false`)",
                    None,
                );
                None
            }
        }
    }

    pub(crate) fn duration(&self, cx: &mut Cx<'_>, key: &str) -> Option<Duration> {
        self.get(key)
            .and_then(|n| read_duration(cx, n, &self.path(key), key))
    }

    /// A duration that must not be zero (a zero interval or timeout is always a mistake).
    pub(crate) fn positive_duration(&self, cx: &mut Cx<'_>, key: &str) -> Option<Duration> {
        let d = self.duration(cx, key)?;
        if d.is_zero() {
            let n = self.get(key)?;
            cx.error(
                &n.loc,
                format!("invalid `{}`: must be longer than `0s`", self.path(key)),
                None,
            );
            return None;
        }
        Some(d)
    }

    pub(crate) fn str_list(&self, cx: &mut Cx<'_>, key: &str) -> Option<Vec<(String, Loc)>> {
        self.get(key)
            .and_then(|n| read_str_list(cx, n, &self.path(key), key))
    }

    pub(crate) fn env(&self, cx: &mut Cx<'_>, key: &str) -> BTreeMap<String, String> {
        match self.get(key) {
            Some(n) => read_env(cx, n, &self.path(key)),
            None => BTreeMap::new(),
        }
    }
}

pub(crate) fn join(path: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if bare {
        key.to_string()
    } else {
        toml_quote(key)
    };
    if path.is_empty() {
        key
    } else {
        format!("{path}.{key}")
    }
}

pub(crate) fn list(items: &[&str]) -> String {
    items
        .iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn type_error(
    cx: &mut Cx<'_>,
    node: &Node,
    path: &str,
    expected: &str,
    hint: Option<String>,
) {
    let found = node.value.describe();
    let message = if path.is_empty() {
        format!("expected {expected}, found {found}")
    } else {
        format!("invalid `{path}`: expected {expected}, found {found}")
    };
    cx.error(&node.loc, message, hint);
}

pub(crate) fn read_str(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<String> {
    match &node.value {
        // A NUL cannot cross exec or the environment: the value would be cut short
        // there, or refused at every deploy, long after it validated.
        Value::Str(s) if s.contains('\0') => {
            cx.error(
                &node.loc,
                format!("invalid `{path}`: the string contains a NUL character (`\\u0000`)"),
                Some("remove it: commands, paths and environment values cannot hold NUL".into()),
            );
            None
        }
        Value::Str(s) => Some(s.clone()),
        Value::Int(_) | Value::Float(_) | Value::Bool(_) => {
            let key = path.rsplit('.').next().unwrap_or(path);
            let raw = match &node.value {
                Value::Int(i) => i.to_string(),
                Value::Float(f) => f.clone(),
                Value::Bool(b) => b.to_string(),
                _ => String::new(),
            };
            type_error(
                cx,
                node,
                path,
                "a string",
                Some(format!("quote it: `{key} = \"{raw}\"`")),
            );
            None
        }
        _ => {
            type_error(cx, node, path, "a string", None);
            None
        }
    }
}

pub(crate) fn read_uint(
    cx: &mut Cx<'_>,
    node: &Node,
    path: &str,
    min: u64,
    max: u64,
) -> Option<u64> {
    let range = if max == u64::MAX {
        format!("at least {min}")
    } else {
        format!("from {min} to {max}")
    };
    match &node.value {
        Value::Int(i) => match u64::try_from(*i) {
            Ok(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                cx.error(
                    &node.loc,
                    format!("invalid `{path}`: expected an integer {range}, found `{i}`"),
                    None,
                );
                None
            }
        },
        Value::Str(s) if s.trim().parse::<i64>().is_ok() => {
            let key = path.rsplit('.').next().unwrap_or(path);
            type_error(
                cx,
                node,
                path,
                "an integer",
                Some(format!("remove the quotes: `{key} = {}`", s.trim())),
            );
            None
        }
        _ => {
            type_error(cx, node, path, &format!("an integer {range}"), None);
            None
        }
    }
}

pub(crate) fn read_duration(
    cx: &mut Cx<'_>,
    node: &Node,
    path: &str,
    key: &str,
) -> Option<Duration> {
    const EXPECTED: &str = "a duration like `30s` or `5m`";
    match &node.value {
        Value::Str(s) => match parse_duration(s) {
            Ok(d) => Some(d),
            Err(e) => {
                cx.error(
                    &node.loc,
                    format!("invalid `{path}`: {e}"),
                    duration_hint(key, s),
                );
                None
            }
        },
        Value::Int(i) => {
            type_error(
                cx,
                node,
                path,
                EXPECTED,
                Some(format!("durations need a unit: `{key} = \"{i}s\"`")),
            );
            None
        }
        _ => {
            type_error(cx, node, path, EXPECTED, None);
            None
        }
    }
}

pub(crate) fn duration_hint(key: &str, text: &str) -> Option<String> {
    let t = text.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return Some(format!("durations need a unit: `{key} = \"{t}s\"`"));
    }
    // Longest words first, so that `minutes` is not read as `min` + `utes`.
    const WORDS: &[(&str, &str)] = &[
        ("milliseconds", "ms"),
        ("millis", "ms"),
        ("seconds", "s"),
        ("second", "s"),
        ("secs", "s"),
        ("sec", "s"),
        ("minutes", "m"),
        ("minute", "m"),
        ("mins", "m"),
        ("min", "m"),
        ("hours", "h"),
        ("hour", "h"),
        ("hrs", "h"),
        ("hr", "h"),
        ("days", "d"),
        ("day", "d"),
    ];
    let mut candidate: String = t.to_ascii_lowercase().split_whitespace().collect();
    for (word, unit) in WORDS {
        candidate = candidate.replace(word, unit);
    }
    if candidate != t && parse_duration(&candidate).is_ok() {
        return Some(format!("write `{key} = {}`", toml_quote(&candidate)));
    }
    if t.ends_with('w') || t.contains("week") {
        return Some(format!("write weeks as days: `{key} = \"7d\"`"));
    }
    None
}

pub(crate) fn read_size(cx: &mut Cx<'_>, node: &Node, path: &str, key: &str) -> Option<ByteSize> {
    const EXPECTED: &str = "a size like `512MiB` or `1GB`";
    match &node.value {
        Value::Str(s) => match ByteSize::parse(s) {
            Ok(b) => Some(b),
            Err(e) => {
                let t = s.trim();
                let hint = (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| format!("sizes need a unit: `{key} = \"{t}MiB\"`"));
                cx.error(&node.loc, format!("invalid `{path}`: {e}"), hint);
                None
            }
        },
        Value::Int(i) => {
            type_error(
                cx,
                node,
                path,
                EXPECTED,
                Some(format!("sizes need a unit: `{key} = \"{i}MiB\"`")),
            );
            None
        }
        _ => {
            type_error(cx, node, path, EXPECTED, None);
            None
        }
    }
}

pub(crate) fn read_str_list(
    cx: &mut Cx<'_>,
    node: &Node,
    path: &str,
    key: &str,
) -> Option<Vec<(String, Loc)>> {
    match &node.value {
        Value::Array(items) => {
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                if let Some(s) = read_str(cx, item, &format!("{path}[{i}]")) {
                    out.push((s, item.loc.clone()));
                }
            }
            Some(out)
        }
        Value::Str(s) => {
            type_error(
                cx,
                node,
                path,
                "an array of strings",
                Some(format!("write `{key} = [{}]`", toml_quote(s))),
            );
            None
        }
        _ => {
            type_error(cx, node, path, "an array of strings", None);
            None
        }
    }
}

use hoist_core::names::EnvNameProblem;

pub(crate) fn env_name_fix(name: &str) -> String {
    let mut fixed: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    if fixed.starts_with(|c: char| c.is_ascii_digit()) {
        fixed.insert(0, '_');
    }
    fixed
}

/// Checks a name used as an environment variable (an `env` key or a secret name).
pub(crate) fn check_env_name(cx: &mut Cx<'_>, name: &str, at: &Loc, what: &str) -> bool {
    match hoist_core::names::check_env_name(name) {
        Ok(()) => return true,
        Err(EnvNameProblem::Reserved(why)) => cx.error(
            at,
            format!("{what} `{name}` is reserved: {why}"),
            Some("choose another name".to_string()),
        ),
        Err(EnvNameProblem::Invalid) => cx.error(
            at,
            format!("invalid {what} `{name}`: not a valid environment variable name"),
            Some(format!(
                "use letters, digits and `_`, not starting with a digit, such as `{}`",
                env_name_fix(name)
            )),
        ),
    }
    false
}

pub(crate) fn read_env(cx: &mut Cx<'_>, node: &Node, path: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(entries) = node.as_table() else {
        type_error(cx, node, path, "a table of `NAME = \"value\"`", None);
        return out;
    };
    for (key, value) in entries {
        if !check_env_name(cx, &key.name, &key.loc, "environment variable") {
            continue;
        }
        if let Some(s) = read_str(cx, value, &join(path, &key.name)) {
            out.insert(key.name.clone(), s);
        }
    }
    out
}

/// App, service, job and backup names end up in paths, unit names and log lines.
pub(crate) fn check_name(cx: &mut Cx<'_>, name: &str, at: &Loc, what: &str) -> bool {
    let ok = hoist_core::names::is_app_name(name);
    if !ok {
        let fixed: String = name
            .trim()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect::<String>()
            .trim_matches('-')
            .to_string();
        let hint = if !fixed.is_empty() && fixed.starts_with(|c: char| c.is_ascii_lowercase()) {
            format!("try `{fixed}`")
        } else {
            "start with a lowercase letter, then use lowercase letters, digits, `-` and `_`"
                .to_string()
        };
        cx.error(
            at,
            format!(
                "invalid {what} name `{name}`: expected a lowercase letter followed by lowercase letters, \
                 digits, `-` or `_` (at most 63)"
            ),
            Some(hint),
        );
    }
    ok
}
