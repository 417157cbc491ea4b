//! `[alerts]`: receivers, `[alerts.rules.NAME]` overrides of the built-in rules (unknown
//! names refused) and `[alerts.logs.NAME]` log-pattern rules (regexes compiled here, so a
//! bad one is refused with its line rather than at the first log line).

use std::collections::BTreeMap;

use hoist_core::spec::{alert_rules, AlertsSpec, LogRule, RuleOverride, ServiceSpec};

use crate::diag::{did_you_mean, Loc};
use crate::read::{check_name, join, read_uint, type_error, Cx, Tbl};
use crate::tree::{Node, Value};

pub(crate) const ALERTS_KEYS: &[&str] = &[
    "webhook",
    "webhook_secret",
    "alertmanager",
    "ca_roots",
    "rules",
    "logs",
];
pub(crate) const RULE_KEYS: &[&str] = &["enabled", "threshold"];
pub(crate) const LOG_RULE_KEYS: &[&str] = &["service", "pattern", "count", "within"];

/// The most matches a log rule may wait for.
pub(crate) const LOG_COUNT_MAX: u64 = 1_000_000;

/// A receiver: an http:// or https:// URL.
pub(crate) fn is_receiver_url(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

pub(crate) fn alerts(
    cx: &mut Cx<'_>,
    node: &Node,
    at: Option<&Loc>,
    services: &BTreeMap<String, ServiceSpec>,
) -> AlertsSpec {
    let Some(t) = Tbl::open(cx, node, "alerts", at.unwrap_or(&node.loc), ALERTS_KEYS) else {
        return AlertsSpec::default();
    };
    let webhook = t.str(cx, "webhook");
    let webhook_secret = t.str(cx, "webhook_secret");
    let alertmanager = t.str(cx, "alertmanager");
    for (key, url) in [("webhook", &webhook), ("alertmanager", &alertmanager)] {
        if let (Some(url), Some(n)) = (url, t.get(key)) {
            if !is_receiver_url(url) {
                cx.error(
                    &n.loc,
                    format!("invalid `alerts.{key}`: `{url}` is not an http:// or https:// URL"),
                    None,
                );
            }
        }
    }
    let ca_roots = t.str(cx, "ca_roots").filter(|p| {
        let ok = crate::validate::is_host_path(p);
        if let (false, Some(n)) = (ok, t.get("ca_roots")) {
            cx.error(
                &n.loc,
                format!("invalid `alerts.ca_roots`: `{p}` is not an absolute path"),
                Some("the PEM file is read on the host by the agent".into()),
            );
        }
        ok
    });
    if let (Some(_), Some(_)) = (&webhook, &webhook_secret) {
        let at = t.key_loc("webhook_secret").unwrap_or(&node.loc);
        cx.error(
            at,
            "`alerts.webhook` and `alerts.webhook_secret` are both set",
            Some("keep one: the secret's value is the webhook URL".into()),
        );
    }
    let mut rules = BTreeMap::new();
    for (key, n) in entries(cx, &t, "rules") {
        if !alert_rules::NAMES.contains(&key.name.as_str()) {
            let hint = match did_you_mean(&key.name, alert_rules::NAMES.iter().copied()) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("the built-in rules are {}", alert_rules::NAMES.join(", ")),
            };
            cx.error(
                &key.loc,
                format!("unknown alert rule `{}`", key.name),
                Some(hint),
            );
            continue;
        }
        let path = join("alerts.rules", &key.name);
        let Some(r) = Tbl::open(cx, n, &path, &key.loc, RULE_KEYS) else {
            continue;
        };
        let enabled = r.bool(cx, "enabled").unwrap_or(true);
        let threshold = r.get("threshold").and_then(|n| {
            let v = number(cx, n, &r.path("threshold"))?;
            if v < 0.0 {
                cx.error(
                    &n.loc,
                    format!("invalid `{}`: must not be negative", r.path("threshold")),
                    None,
                );
                return None;
            }
            Some(v)
        });
        rules.insert(key.name.clone(), RuleOverride { enabled, threshold });
    }
    let mut logs = BTreeMap::new();
    for (key, n) in entries(cx, &t, "logs") {
        if !check_name(cx, &key.name, &key.loc, "log rule") {
            continue;
        }
        let path = join("alerts.logs", &key.name);
        let Some(r) = Tbl::open(cx, n, &path, &key.loc, LOG_RULE_KEYS) else {
            continue;
        };
        let service = r.str(cx, "service");
        if let (Some(s), Some(n)) = (&service, r.get("service")) {
            if !services.contains_key(s) {
                cx.error(
                    &n.loc,
                    format!("`{}` names no service: `{s}`", r.path("service")),
                    None,
                );
            }
        }
        let pattern = r.str(cx, "pattern");
        if let (Some(p), Some(n)) = (&pattern, r.get("pattern")) {
            if let Err(e) = regex_lite::Regex::new(p) {
                cx.error(
                    &n.loc,
                    format!("invalid regex in `{}`: {e}", r.path("pattern")),
                    None,
                );
            }
        }
        let count = match r.get("count") {
            Some(n) => read_uint(cx, n, &r.path("count"), 1, LOG_COUNT_MAX).map(|c| c as u32),
            None => Some(1),
        };
        let within = r
            .positive_duration(cx, "within")
            .unwrap_or(std::time::Duration::from_secs(300));
        if service.is_none() {
            r.missing(cx, "service", None);
        }
        if pattern.is_none() && r.get("pattern").is_none() {
            r.missing(
                cx,
                "pattern",
                Some("a regex, e.g. `pattern = \"no sandboxes available\"`".into()),
            );
        }
        if let (Some(service), Some(pattern), Some(count)) = (service, pattern, count) {
            logs.insert(
                key.name.clone(),
                LogRule {
                    service,
                    pattern,
                    count,
                    within,
                },
            );
        }
    }
    AlertsSpec {
        webhook,
        webhook_secret,
        alertmanager,
        ca_roots,
        rules,
        logs,
    }
}

fn entries<'a>(cx: &mut Cx<'_>, t: &Tbl<'a>, key: &str) -> Vec<(&'a crate::tree::Key, &'a Node)> {
    let Some(n) = t.get(key) else {
        return Vec::new();
    };
    match n.as_table() {
        Some(e) => e.iter().map(|(k, v)| (k, v)).collect(),
        None => {
            type_error(
                cx,
                n,
                &t.path(key),
                &format!("a table of named entries like `[alerts.{key}.name]`"),
                None,
            );
            Vec::new()
        }
    }
}

fn number(cx: &mut Cx<'_>, n: &Node, path: &str) -> Option<f64> {
    match &n.value {
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) => f.parse().ok(),
        _ => {
            type_error(cx, n, path, "a number", None);
            None
        }
    }
}
