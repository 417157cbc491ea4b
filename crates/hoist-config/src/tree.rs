//! The parsed app file as an owned tree whose every key and value remembers which file and
//! which bytes it came from, so that an overlay can be merged over the base file and a
//! diagnostic about any value still points into the right file. Owns TOML syntax errors
//! and the overlay merge rule; knows nothing of what the keys mean.

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::diag::{Diagnostic, Loc, Severity, SourceFile};

#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub value: Value,
    pub loc: Loc,
}

#[derive(Debug, Clone)]
pub(crate) struct Key {
    pub name: String,
    pub loc: Loc,
}

#[derive(Debug, Clone)]
pub(crate) enum Value {
    Str(String),
    Int(i128),
    Float(String),
    Bool(bool),
    Datetime(String),
    Array(Vec<Node>),
    Table(Vec<(Key, Node)>),
}

impl Value {
    /// How a value is named in "found …": `the integer `30``.
    pub fn describe(&self) -> String {
        match self {
            Value::Str(s) => format!("the string `{}`", toml_quote(s)),
            Value::Int(i) => format!("the integer `{i}`"),
            Value::Float(f) => format!("the float `{f}`"),
            Value::Bool(b) => format!("the boolean `{b}`"),
            Value::Datetime(d) => format!("the date-time `{d}`"),
            Value::Array(_) => "an array".to_string(),
            Value::Table(_) => "a table".to_string(),
        }
    }
}

/// A string as it would be written in TOML (basic string, escaped).
pub(crate) fn toml_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Node {
    pub fn as_table(&self) -> Option<&[(Key, Node)]> {
        match &self.value {
            Value::Table(t) => Some(t),
            _ => None,
        }
    }
}

/// Parses one file into a tree, or returns every syntax error in it.
pub(crate) fn parse(files: &[SourceFile], file: usize) -> Result<Node, Vec<Diagnostic>> {
    let text = files[file].text.as_str();
    let (table, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        return Err(errors
            .iter()
            .map(|e| {
                let span = e.span().unwrap_or(0..0);
                let message = format!("invalid TOML: {}", e.message().trim_end_matches('.'));
                Diagnostic::new(files, Severity::Error, &Loc { file, span }, message, None)
            })
            .collect());
    }
    let span = table.span();
    Ok(Node {
        value: convert_table(table.get_ref(), file),
        loc: Loc { file, span },
    })
}

fn convert_table(table: &DeTable<'_>, file: usize) -> Value {
    let mut entries: Vec<(Key, Node)> = table
        .iter()
        .map(|(k, v)| {
            (
                Key {
                    name: k.get_ref().to_string(),
                    loc: Loc {
                        file,
                        span: k.span(),
                    },
                },
                convert(v, file),
            )
        })
        .collect();
    // The map is ordered by name; file order makes diagnostics and `[[hosts]]`-like
    // lists read the way the user wrote them.
    entries.sort_by_key(|(k, _)| k.loc.span.start);
    Value::Table(entries)
}

fn convert(value: &Spanned<DeValue<'_>>, file: usize) -> Node {
    let loc = Loc {
        file,
        span: value.span(),
    };
    let value = match value.get_ref() {
        DeValue::String(s) => Value::Str(s.to_string()),
        DeValue::Integer(i) => {
            let digits = i.as_str().replace('_', "");
            // The parser already checked the literal; i128 holds every TOML integer.
            Value::Int(i128::from_str_radix(&digits, i.radix()).unwrap_or(i128::MAX))
        }
        DeValue::Float(f) => Value::Float(f.as_str().to_string()),
        DeValue::Boolean(b) => Value::Bool(*b),
        DeValue::Datetime(d) => Value::Datetime(d.to_string()),
        DeValue::Array(a) => Value::Array(a.iter().map(|v| convert(v, file)).collect()),
        DeValue::Table(t) => convert_table(t, file),
    };
    Node { value, loc }
}

/// Merges `overlay` over `base`: tables merge key by key, anything else (arrays included,
/// so `[[hosts]]` in an overlay replaces the whole host list) is replaced.
pub(crate) fn merge(base: &mut Node, overlay: Node) {
    match (&mut base.value, overlay.value) {
        (Value::Table(base_entries), Value::Table(over_entries)) => {
            for (key, value) in over_entries {
                match base_entries.iter_mut().find(|(k, _)| k.name == key.name) {
                    Some((_, existing))
                        if existing.as_table().is_some() && value.as_table().is_some() =>
                    {
                        merge(existing, value);
                    }
                    Some(slot) => *slot = (key, value),
                    None => base_entries.push((key, value)),
                }
            }
        }
        (_, value) => {
            base.value = value;
            base.loc = overlay.loc;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(texts: &[&str]) -> Vec<SourceFile> {
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| SourceFile {
                name: format!("f{i}"),
                text: t.to_string(),
            })
            .collect()
    }

    fn get<'a>(node: &'a Node, path: &[&str]) -> &'a Node {
        path.iter().fold(node, |n, k| {
            &n.as_table()
                .unwrap()
                .iter()
                .find(|(key, _)| key.name == *k)
                .unwrap()
                .1
        })
    }

    #[test]
    fn overlay_merges_tables_and_replaces_arrays() {
        let files = files(&[
            "app = \"a\"\n[env]\nA = \"1\"\nB = \"2\"\n[[hosts]]\nname = \"one\"\n[[hosts]]\nname = \"two\"\n",
            "[env]\nB = \"3\"\n[[hosts]]\nname = \"stage\"\n",
        ]);
        let mut base = parse(&files, 0).unwrap();
        merge(&mut base, parse(&files, 1).unwrap());
        assert!(matches!(&get(&base, &["env", "A"]).value, Value::Str(s) if s == "1"));
        let b = get(&base, &["env", "B"]);
        assert!(matches!(&b.value, Value::Str(s) if s == "3"));
        assert_eq!(b.loc.file, 1);
        let Value::Array(hosts) = &get(&base, &["hosts"]).value else {
            panic!("hosts is an array")
        };
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0].loc.file, 1);
    }

    #[test]
    fn syntax_errors_are_located() {
        let files = files(&["app = \"a\"\nreplicas = \n"]);
        let errors = parse(&files, 0).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, 2);
    }
}
