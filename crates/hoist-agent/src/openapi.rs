//! `GET /v1/openapi.json`: the agent's API described in OpenAPI 3.1, served without the
//! token on the dashboard's listener (it holds no data). Its tests keep it true: its
//! operations are exactly `server::ROUTES` (plus itself), and the wire types the CLI
//! reads validate against its schemas, with no field missing or extra.

use serde_json::{json, Map, Value};

use crate::server::ROUTES;

/// The description's own path (served by the dashboard listener, not the socket).
pub(crate) const SELF: (&str, &str) = ("GET", "/v1/openapi.json");

fn r(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn array(of: Value) -> Value {
    json!({ "type": "array", "items": of })
}

/// An object whose every field is listed, required and nothing else allowed.
fn strict(fields: &[(&str, Value)]) -> Value {
    let props: Map<String, Value> = fields
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let required: Vec<&str> = fields.iter().map(|(k, _)| *k).collect();
    json!({
        "type": "object",
        "properties": props,
        "required": required,
        "additionalProperties": false,
    })
}

fn s() -> Value {
    json!({ "type": "string" })
}
fn s_null() -> Value {
    json!({ "type": ["string", "null"] })
}
fn int() -> Value {
    json!({ "type": "integer" })
}
fn uint() -> Value {
    json!({ "type": "integer", "minimum": 0 })
}
fn uint_null() -> Value {
    json!({ "type": ["integer", "null"], "minimum": 0 })
}
fn boolean() -> Value {
    json!({ "type": "boolean" })
}
fn object() -> Value {
    json!({ "type": "object" })
}

fn schemas() -> Value {
    let changes = strict(&[
        ("added", array(s())),
        ("removed", array(s())),
        ("changed", array(s())),
    ]);
    json!({
        "ApiError": {
            "type": "object",
            "properties": { "error": s(), "hint": s() },
            "required": ["error"],
            "additionalProperties": false,
        },
        "Hello": strict(&[
            ("api", uint()), ("version", s()), ("boot", s()), ("pid", uint()),
            ("root", s()), ("proxy", s_null()),
        ]),
        "InstanceStatus": strict(&[
            ("instance", s()), ("service", s()), ("release", s()), ("state", s()),
            ("pid", uint_null()), ("port", uint_null()), ("uptime_s", uint_null()),
            ("restarts", uint()), ("rss_bytes", uint_null()),
            ("cpu_s", json!({ "type": ["number", "null"] })), ("last_exit", s_null()),
            ("dropped_lines", uint()),
        ]),
        "AppStatus": strict(&[
            ("app", s()), ("release", s_null()), ("standby", s_null()), ("url", s_null()),
            ("instances", array(r("InstanceStatus"))),
        ]),
        "Status": strict(&[("host", s()), ("agent", r("Hello")), ("apps", array(r("AppStatus")))]),
        "ReleaseInfo": strict(&[
            ("app", s()), ("release", s()), ("created_at_ms", int()), ("commit", s_null()),
            ("role", json!({ "type": "string", "enum": ["current", "standby", "kept"] })),
        ]),
        "HistoryRecord": strict(&[
            ("seq", int()), ("at_ms", int()), ("app", s()), ("kind", s()),
            ("release", s_null()), ("previous", s_null()), ("commit", s_null()),
            ("actor", s()), ("result", s()), ("duration_ms", int()), ("reason", s_null()),
        ]),
        "MinutePoint": strict(&[
            ("t", int()), ("requests", uint()), ("errors_5xx", uint()),
            ("p99_seconds", json!({ "type": "number" })),
        ]),
        "VerifyReport": strict(&[("records", int()), ("problems", array(s()))]),
        "LogLine": strict(&[("t", s()), ("instance", s()), ("stream", s()), ("line", s())]),
        "Event": strict(&[
            ("id", int()), ("at_ms", int()), ("app", s_null()), ("kind", s()),
            ("subject", s_null()), ("message", s()),
        ]),
        "JobRun": strict(&[
            ("id", int()), ("app", s()), ("job", s()), ("release", s()), ("trigger", s()),
            ("started_at_ms", int()), ("finished_at_ms", json!({ "type": ["integer", "null"] })),
            ("status", s()), ("exit_code", json!({ "type": ["integer", "null"] })),
            ("output", s_null()),
        ]),
        "BackupInfo": strict(&[
            ("id", int()), ("app", s()), ("name", s()), ("kind", s()), ("file", s_null()),
            ("copy", s_null()), ("sha256", s_null()), ("size", uint_null()),
            ("started_at_ms", int()), ("duration_ms", json!({ "type": ["integer", "null"] })),
            ("release", s_null()), ("trigger", s()), ("status", s()), ("error", s_null()),
            ("checked", s_null()), ("verified", json!({ "type": ["integer", "null"] })),
        ]),
        "RestoreResult": object(),
        "CertAttempt": strict(&[("at", s()), ("ok", boolean()), ("message", s())]),
        "CertStatus": strict(&[
            ("domain", s()), ("app", s()), ("service", s()), ("source", s()),
            ("issuer", s_null()), ("not_before", s_null()), ("not_after", s_null()),
            ("serving", boolean()), ("renewing", boolean()),
            ("last", json!({ "oneOf": [r("CertAttempt"), { "type": "null" }] })),
            ("problem", s_null()),
        ]),
        "Uploaded": strict(&[("app", s()), ("release", s()), ("files", uint()), ("bytes", uint())]),
        "SecretNames": strict(&[("app", s()), ("names", array(s()))]),
        "SecretValue": strict(&[("value", s())]),
        "MaintenanceRequest": {
            "type": "object",
            "properties": { "on": boolean(), "message": s_null() },
            "required": ["on"],
        },
        "MaintenanceState": strict(&[("app", s()), ("on", boolean()), ("message", s_null())]),
        "DashboardInfo": strict(&[("addr", s_null()), ("token", s())]),
        "Lease": strict(&[
            ("app", s()), ("holder", s()), ("started_at_ms", int()), ("heartbeat_at_ms", int()),
            ("expires_at_ms", int()), ("live", boolean()),
        ]),
        "LeaseRequest": {
            "type": "object",
            "properties": { "holder": s(), "token": s(), "ttl_ms": int(), "acme_peers": array(s()) },
            "required": ["holder", "token", "ttl_ms"],
        },
        "RenewRequest": {
            "type": "object",
            "properties": { "token": s(), "ttl_ms": int() },
            "required": ["token", "ttl_ms"],
        },
        "Offer": strict(&[
            ("app", s()), ("release", s()), ("complete", boolean()), ("missing", array(s())),
            ("need_full", boolean()),
        ]),
        "BlobsStored": strict(&[("blobs", uint()), ("bytes", uint())]),
        "RollbackRequest": {
            "type": "object",
            "properties": {
                "app": s(), "release": s_null(), "host": s(), "actor": s(), "lease": s(),
                "data": r("RollbackData"),
            },
            "required": ["app", "host", "actor"],
        },
        "RollbackData": {
            "description": "What a rollback across a migration does with the data.",
            "oneOf": [
                strict(&[("mode", json!({ "const": "with_backup" }))]),
                strict(&[("mode", json!({ "const": "keep_data" }))]),
                strict(&[("mode", json!({ "const": "restored_on" })), ("host", s()), ("note", s())]),
            ],
        },
        "MigrationBackup": strict(&[("name", s()), ("id", int())]),
        "Migration": strict(&[
            ("release", s()), ("hook", s()), ("operation", int()), ("at_ms", int()),
            ("backups", array(r("MigrationBackup"))), ("kind", s()),
        ]),
        "RollbackCheck": strict(&[
            ("app", s()), ("current", s()), ("target", s()), ("migrations", array(r("Migration"))),
        ]),
        "Finding": strict(&[
            ("id", s()), ("status", s()), ("why", s()), ("fix", s()), ("evidence", array(s())),
            ("runbook", s()),
        ]),
        "DoctorReport": strict(&[
            ("host", s()), ("version", s()), ("now_ms", int()), ("findings", array(r("Finding"))),
        ]),
        "DeployRequest": {
            "type": "object",
            "description": "`spec` is the validated app spec `hoist deploy` sends.",
            "properties": {
                "spec": object(), "release": s(), "host": s(), "actor": s(), "lease": s(),
            },
            "required": ["spec", "release", "host", "actor"],
        },
        "PlanRequest": {
            "type": "object",
            "properties": {
                "spec": object(), "manifest": s(), "host": s(),
                "client_time_ms": json!({ "type": ["integer", "null"] }),
            },
            "required": ["spec", "manifest", "host"],
        },
        "Changes": changes,
        "Plan": {
            "type": "object",
            "properties": {
                "app": s(), "current": s_null(), "release": s(), "services": r("Changes"),
                "jobs": r("Changes"), "env": r("Changes"), "secrets": r("Changes"),
                "files": r("Changes"), "upload_bytes": uint(), "checks": array(object()),
            },
            "required": ["app", "release", "services", "jobs", "env", "secrets", "files", "upload_bytes", "checks"],
        },
        "TakeRequest": {
            "type": "object",
            "properties": { "name": s_null(), "actor": s() },
        },
        "RestoreRequest": {
            "type": "object",
            "properties": {
                "name": s(), "backup": json!({ "type": ["integer", "null"] }), "actor": s(),
            },
            "required": ["name"],
        },
    })
}

fn ok(schema: Value) -> Value {
    json!({ "description": "OK", "content": { "application/json": { "schema": schema } } })
}

fn ndjson(what: &str) -> Value {
    json!({
        "description": format!("a stream of JSON lines: {what}"),
        "content": { "application/x-ndjson": { "schema": s() } },
    })
}

fn json_body(schema: Value) -> Value {
    json!({ "required": true, "content": { "application/json": { "schema": schema } } })
}

fn query(name: &str, schema: Value, description: &str) -> Value {
    json!({ "name": name, "in": "query", "required": false, "schema": schema, "description": description })
}

/// One operation: its summary, query parameters, body and 200 answer. Path parameters
/// come from the template; every other answer is an `ApiError`.
fn operation(method: &str, template: &str) -> (&'static str, Vec<Value>, Option<Value>, Value) {
    match (method, template) {
        ("GET", "/v1/hello") => ("The agent's identity and API version", vec![], None, ok(r("Hello"))),
        ("POST", "/v1/agent/stop") => ("Stop the agent (instances and the proxy keep running)", vec![], None, ok(r("Hello"))),
        ("POST", "/v1/apps/{app}/down") => (
            "Take an app down: clear its current release, remove its routes, stop its instances",
            vec![query("actor", s(), "who asks (recorded in the history)")],
            None,
            ok(object()),
        ),
        ("GET", "/v1/status") => ("Apps and instances on this host", vec![], None, ok(r("Status"))),
        ("GET", "/v1/slo") => (
            "Each SLO's objective, compliance and error budget (current releases' apps)",
            vec![query("app", s(), "only this app's")],
            None,
            ok(strict(&[("slos", array(object()))])),
        ),
        ("GET", "/v1/minutes") => (
            "Per-minute traffic of a service (one release, or all added up): requests, 5xx, p99",
            vec![
                json!({ "name": "app", "in": "query", "required": true, "schema": s() }),
                json!({ "name": "service", "in": "query", "required": true, "schema": s() }),
                query("release", s(), "only this release (default: all added up)"),
                query("since", int(), "from this time (Unix seconds; default: an hour ago)"),
                query("step", json!({ "type": "integer", "minimum": 0, "maximum": 4294967295_u64 }), "minutes per point (default 1)"),
            ],
            None,
            ok(strict(&[("points", array(r("MinutePoint")))])),
        ),
        ("GET", "/v1/minutes/keys") => (
            "The [app, service, release] that had traffic since a time",
            vec![query("since", int(), "Unix seconds (default: an hour ago)")],
            None,
            ok(strict(&[("keys", array(json!({ "type": "array", "items": s(), "minItems": 3, "maxItems": 3 })))])),
        ),
        ("GET", "/v1/certs") => ("Certificates of the apps' HTTPS domains", vec![], None, ok(array(r("CertStatus")))),
        ("POST", "/v1/alerts/test/{app}") => ("Send a test alert to the app's receivers", vec![], None, ok(object())),
        ("GET", "/v1/alerts") => ("Firing alerts and recent deliveries", vec![], None, ok(strict(&[("firing", array(object())), ("recent", array(r("Event")))]))),
        ("GET", "/v1/events") => (
            "Events after an id, as JSON lines (`Event`); with `follow`, new ones as they happen",
            vec![
                query("after", int(), "only events with a greater id"),
                query("follow", json!({ "type": "string", "enum": ["0", "1"] }), "1: keep the stream open"),
            ],
            None,
            ndjson("`Event` objects"),
        ),
        ("POST", "/v1/releases") => (
            "Upload an artifact (verified and stored in one pass)",
            vec![query("app", s(), "the app a deploy uploads for"), query("actor", s(), "who deploys")],
            Some(json!({ "required": true, "content": { "application/octet-stream": { "schema": { "type": "string", "format": "binary" } } } })),
            ok(r("Uploaded")),
        ),
        ("GET", "/v1/releases/{app}") => ("Releases of an app kept on this host", vec![], None, ok(array(r("ReleaseInfo")))),
        ("POST", "/v1/releases/offer") => (
            "Offer a release's compact manifest; the answer names the blobs this host lacks",
            vec![],
            Some(json!({ "required": true, "content": { "application/octet-stream": { "schema": { "type": "string", "format": "binary" } } } })),
            ok(r("Offer")),
        ),
        ("POST", "/v1/releases/blobs") => (
            "A stream of the blobs an offer asked for",
            vec![query("app", s(), "the app"), query("release", s(), "the release offered"), query("actor", s(), "who deploys")],
            Some(json!({ "required": true, "content": { "application/octet-stream": { "schema": { "type": "string", "format": "binary" } } } })),
            ok(r("BlobsStored")),
        ),
        ("POST", "/v1/deploy") => ("Deploy an uploaded release; progress as JSON lines ending with the outcome", vec![], Some(json_body(r("DeployRequest"))), ndjson("`Progress` objects")),
        ("POST", "/v1/plan") => ("What a deploy of a release would change", vec![], Some(json_body(r("PlanRequest"))), ok(r("Plan"))),
        ("POST", "/v1/rollback") => ("Roll back to the standby or a named release; progress as JSON lines", vec![], Some(json_body(r("RollbackRequest"))), ndjson("`Progress` objects")),
        ("POST", "/v1/rollback/check") => ("Where a rollback would go and the migrations it would cross; nothing changes", vec![], Some(json_body(r("RollbackRequest"))), ok(r("RollbackCheck"))),
        ("GET", "/v1/doctor") => ("What this host finds wrong with itself (`hoist doctor`)", vec![], None, ok(r("DoctorReport"))),
        ("GET", "/v1/jobs") => ("Recent job runs", vec![query("app", s(), "only this app's")], None, ok(array(r("JobRun")))),
        ("POST", "/v1/jobs/{app}/{job}/run") => ("Run a job now", vec![], None, ok(object())),
        ("POST", "/v1/services/{app}/{service}/{action}") => ("Start, stop or restart a service's instances (`action`: start, stop or restart)", vec![], None, ok(object())),
        ("GET", "/v1/history") => (
            "The hash-chained history (oldest first); with `verify`, the chain's check",
            vec![
                query("app", s(), "only this app's"),
                query("limit", json!({ "type": "integer", "minimum": 0 }), "how many records (the latest)"),
                query("verify", json!({ "type": "string", "enum": ["1"] }), "check the chain instead (answers a `VerifyReport`)"),
            ],
            None,
            ok(json!({ "oneOf": [array(r("HistoryRecord")), r("VerifyReport")] })),
        ),
        ("GET", "/v1/logs/{app}/{service}") => (
            "A service's log lines as JSON lines (`LogLine`); with `follow`, new ones as they are written",
            vec![
                query("tail", json!({ "type": "integer", "minimum": 0 }), "only the last N lines"),
                query("grep", s(), "only lines containing this text"),
                query("since", int(), "only lines at or after this time (ms since the epoch)"),
                query("follow", json!({ "type": "string", "enum": ["0", "1"] }), "1: keep the stream open"),
            ],
            None,
            ndjson("`LogLine` objects"),
        ),
        ("POST", "/v1/maintenance/{app}") => ("Turn an app's maintenance page on or off", vec![], Some(json_body(r("MaintenanceRequest"))), ok(r("MaintenanceState"))),
        ("GET", "/v1/secrets/{app}") => ("The names of an app's secrets (never their values)", vec![], None, ok(r("SecretNames"))),
        ("PUT", "/v1/secrets/{app}/{name}") => ("Set a secret", vec![], Some(json_body(r("SecretValue"))), ok(strict(&[("app", s()), ("name", s())]))),
        ("DELETE", "/v1/secrets/{app}/{name}") => ("Remove a secret", vec![], None, ok(strict(&[("app", s()), ("name", s())]))),
        ("GET", "/v1/leases") => ("Deploy leases held on this host", vec![], None, ok(array(r("Lease")))),
        ("POST", "/v1/leases/{app}") => ("Take an app's deploy lease", vec![], Some(json_body(r("LeaseRequest"))), ok(r("Lease"))),
        ("POST", "/v1/leases/{app}/renew") => ("Renew a deploy lease", vec![], Some(json_body(r("RenewRequest"))), ok(r("Lease"))),
        ("DELETE", "/v1/leases/{app}") => ("Release a deploy lease", vec![query("token", s(), "the lease's token")], None, ok(object())),
        ("GET", "/v1/backups") => ("Backups taken on this host", vec![query("app", s(), "only this app's")], None, ok(array(r("BackupInfo")))),
        ("POST", "/v1/backups/{app}") => ("Take each named backup (or all) now", vec![], Some(json!({ "required": false, "content": { "application/json": { "schema": r("TakeRequest") } } })), ok(array(r("BackupInfo")))),
        ("POST", "/v1/backups/{app}/verify") => ("Restore the latest backups into scratch space and check them", vec![], Some(json!({ "required": false, "content": { "application/json": { "schema": r("TakeRequest") } } })), ok(array(r("BackupInfo")))),
        ("POST", "/v1/backups/{app}/restore") => ("Restore a backup (stops and starts the app)", vec![], Some(json_body(r("RestoreRequest"))), ok(r("RestoreResult"))),
        ("GET", "/v1/dashboard") => ("Where the dashboard listens and its login token", vec![], None, ok(r("DashboardInfo"))),
        ("POST", "/v1/dashboard/rotate") => ("A new dashboard token; every session ends", vec![], None, ok(r("DashboardInfo"))),
        ("GET", "/v1/openapi.json") => ("This description (no token needed)", vec![], None, ok(object())),
        _ => ("(undescribed)", vec![], None, ok(object())),
    }
}

/// The whole description.
pub(crate) fn document() -> Value {
    let mut paths: Map<String, Value> = Map::new();
    for (method, template) in ROUTES.iter().chain(std::iter::once(&SELF)) {
        let (summary, mut params, body, answer) = operation(method, template);
        for seg in template.split('/') {
            if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                params.push(json!({
                    "name": name, "in": "path", "required": true,
                    "schema": { "type": "string", "minLength": 1 },
                }));
            }
        }
        let mut op = json!({
            "operationId": format!("{}{}", method.to_lowercase(), template.replace(['/', '{', '}', '.'], "_")),
            "summary": summary,
            "parameters": params,
            "responses": {
                "200": answer,
                "default": { "description": "an error", "content": { "application/json": { "schema": r("ApiError") } } },
            },
        });
        if let Some(b) = body {
            op["requestBody"] = b;
        }
        if (*method, *template) == SELF {
            op["security"] = json!([]);
        }
        let entry = paths
            .entry(template.to_string())
            .or_insert_with(|| json!({}));
        entry[method.to_lowercase()] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "hoist agent API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The API of a host's agent: over its Unix socket (peer uid checked), \
                and on the dashboard's listener behind the token of `<root>/dashboard.token` \
                (`Authorization: Bearer TOKEN`, or a dashboard session with `X-CSRF-Token` on \
                changes). Errors answer an `ApiError`.",
        },
        "servers": [{ "url": "/" }],
        "security": [{ "bearer": [] }],
        "paths": paths,
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": schemas(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn every_route_is_described_and_nothing_else() {
        let doc = document();
        let described: BTreeSet<(String, String)> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(p, ops)| {
                ops.as_object()
                    .unwrap()
                    .keys()
                    .map(move |m| (m.to_uppercase(), p.clone()))
            })
            .collect();
        let routes: BTreeSet<(String, String)> = ROUTES
            .iter()
            .chain(std::iter::once(&SELF))
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        assert_eq!(described, routes);
        for (m, p) in &routes {
            let (summary, ..) = operation(m, p);
            assert_ne!(summary, "(undescribed)", "{m} {p} has no description");
        }
    }

    #[test]
    fn every_route_template_is_matched_by_itself_alone() {
        for (m, t) in ROUTES {
            let parts: Vec<&str> = t.trim_start_matches('/').split('/').collect();
            assert_eq!(crate::server::template_of(m, &parts), Ok(*t), "{m} {t}");
        }
        let parts = ["v1", "releases", "offer"];
        assert_eq!(
            crate::server::template_of("POST", &parts),
            Ok("/v1/releases/offer")
        );
        assert_eq!(
            crate::server::template_of("GET", &["v1", "nothing"]),
            Err(false)
        );
        assert_eq!(
            crate::server::template_of("DELETE", &["v1", "status"]),
            Err(true)
        );
    }

    /// A small validator for the subset of JSON Schema used above.
    fn valid(doc: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
        if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
            let name = r.rsplit('/').next().unwrap();
            return valid(doc, &doc["components"]["schemas"][name], v, at);
        }
        if let Some(any) = schema.get("oneOf").and_then(Value::as_array) {
            let n = any.iter().filter(|s| valid(doc, s, v, at).is_ok()).count();
            return (n == 1)
                .then_some(())
                .ok_or(format!("{at}: {n} of oneOf match"));
        }
        if let Some(c) = schema.get("const") {
            if c != v {
                return Err(format!("{at}: {v} where {c} is described"));
            }
        }
        if let Some(t) = schema.get("type") {
            let types: Vec<&str> = match t {
                Value::String(s) => vec![s.as_str()],
                Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                _ => vec![],
            };
            let kind = match v {
                Value::Null => "null",
                Value::Bool(_) => "boolean",
                Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
                Value::Number(_) => "number",
                Value::String(_) => "string",
                Value::Array(_) => "array",
                Value::Object(_) => "object",
            };
            let fits = types.contains(&kind) || (kind == "integer" && types.contains(&"number"));
            if !fits {
                return Err(format!("{at}: {kind} where {types:?} is described"));
            }
        }
        if let (Some(props), Value::Object(obj)) = (schema.get("properties"), v) {
            for req in schema["required"].as_array().into_iter().flatten() {
                let k = req.as_str().unwrap();
                if !obj.contains_key(k) {
                    return Err(format!("{at}: required `{k}` missing"));
                }
            }
            for (k, val) in obj {
                match props.get(k) {
                    Some(s) => valid(doc, s, val, &format!("{at}.{k}"))?,
                    None if schema["additionalProperties"] == json!(false) => {
                        return Err(format!("{at}: `{k}` is not described"))
                    }
                    None => {}
                }
            }
        }
        if let (Some(items), Value::Array(a)) = (schema.get("items"), v) {
            for (i, x) in a.iter().enumerate() {
                valid(doc, items, x, &format!("{at}[{i}]"))?;
            }
        }
        Ok(())
    }

    fn check<T: serde::Serialize>(name: &str, value: &T) {
        let doc = document();
        let v = serde_json::to_value(value).unwrap();
        valid(&doc, &doc["components"]["schemas"][name], &v, name).unwrap();
    }

    /// The wire types the CLI reads are what the description says, field for field (a
    /// field added to a type without its schema, or the other way round, fails here).
    #[test]
    fn the_wire_types_match_their_schemas() {
        use hoist_protocol::agent as a;
        let hello = a::Hello {
            api: 1,
            version: "0.1.0".into(),
            boot: "b".into(),
            pid: 1,
            root: "/r".into(),
            proxy: None,
        };
        check("Hello", &hello);
        let inst = a::InstanceStatus {
            instance: "i".into(),
            service: "web".into(),
            release: "r".into(),
            state: "healthy".into(),
            pid: Some(3),
            port: Some(80),
            uptime_s: Some(1),
            restarts: 0,
            rss_bytes: None,
            cpu_s: Some(0.5),
            last_exit: None,
            dropped_lines: 0,
        };
        check(
            "Status",
            &a::Status {
                host: "h".into(),
                agent: hello,
                apps: vec![a::AppStatus {
                    app: "demo".into(),
                    release: Some("r".into()),
                    standby: None,
                    url: None,
                    instances: vec![inst],
                }],
            },
        );
        check(
            "ReleaseInfo",
            &a::ReleaseInfo {
                app: "demo".into(),
                release: "r".into(),
                created_at_ms: 1,
                commit: None,
                role: "current".into(),
            },
        );
        check(
            "HistoryRecord",
            &a::HistoryRecord {
                seq: 1,
                at_ms: 1,
                app: "demo".into(),
                kind: "deploy".into(),
                release: Some("r".into()),
                previous: None,
                commit: None,
                actor: "dashboard".into(),
                result: "succeeded".into(),
                duration_ms: 5,
                reason: None,
            },
        );
        check(
            "VerifyReport",
            &hoist_state::VerifyReport {
                records: 3,
                problems: vec![],
            },
        );
        check(
            "LogLine",
            &a::LogLine {
                t: "t".into(),
                instance: "i".into(),
                stream: "stdout".into(),
                line: "x".into(),
            },
        );
        check(
            "Event",
            &hoist_state::Event {
                id: 1,
                at_ms: 1,
                app: None,
                kind: "k".into(),
                subject: None,
                message: "m".into(),
            },
        );
        check(
            "JobRun",
            &hoist_state::JobRun {
                id: 1,
                app: "demo".into(),
                job: "j".into(),
                release: "r".into(),
                trigger: "manual".into(),
                started_at_ms: 1,
                finished_at_ms: None,
                status: "running".into(),
                exit_code: None,
                output: None,
            },
        );
        check(
            "ApiError",
            &a::ApiError {
                error: "e".into(),
                hint: Some("h".into()),
            },
        );
        check(
            "DashboardInfo",
            &a::DashboardInfo {
                addr: Some("127.0.0.1:1".into()),
                token: "t".into(),
            },
        );
        check(
            "SecretNames",
            &a::SecretNames {
                app: "demo".into(),
                names: vec!["A".into()],
            },
        );
        check(
            "MaintenanceState",
            &a::MaintenanceState {
                app: "demo".into(),
                on: true,
                message: None,
            },
        );
        check(
            "Uploaded",
            &a::Uploaded {
                app: "demo".into(),
                release: "r".into(),
                files: 1,
                bytes: 2,
            },
        );
        check(
            "CertStatus",
            &a::CertStatus {
                domain: "d".into(),
                app: "demo".into(),
                service: "web".into(),
                source: "acme".into(),
                issuer: None,
                not_before: None,
                not_after: None,
                serving: false,
                renewing: false,
                last: Some(a::CertAttempt {
                    at: "t".into(),
                    ok: true,
                    message: "m".into(),
                }),
                problem: None,
            },
        );
        check(
            "Lease",
            &hoist_protocol::fleet::Lease {
                app: "demo".into(),
                holder: "h".into(),
                started_at_ms: 1,
                heartbeat_at_ms: 1,
                expires_at_ms: 2,
                live: true,
            },
        );
        check(
            "MinutePoint",
            &hoist_state::minutes::MinutePoint {
                t: 60,
                requests: 3,
                errors_5xx: 1,
                p99_seconds: 0.25,
            },
        );
        check(
            "BlobsStored",
            &hoist_protocol::fleet::BlobsStored { blobs: 1, bytes: 2 },
        );
        check(
            "RollbackCheck",
            &a::RollbackCheck {
                app: "demo".into(),
                current: "r2".into(),
                target: "r1".into(),
                migrations: vec![a::Migration {
                    release: "r2".into(),
                    hook: "migrate".into(),
                    operation: 4,
                    at_ms: 1,
                    backups: vec![a::MigrationBackup {
                        name: "db".into(),
                        id: 7,
                    }],
                    kind: "pre_activate".into(),
                }],
            },
        );
        for data in [
            a::RollbackData::WithBackup,
            a::RollbackData::KeepData,
            a::RollbackData::RestoredOn {
                host: "h1".into(),
                note: "n".into(),
            },
        ] {
            check("RollbackData", &data);
        }
        check(
            "DoctorReport",
            &a::DoctorReport {
                host: "h".into(),
                version: "0.1.0".into(),
                now_ms: 1,
                findings: vec![a::Finding::new("disk.space", "warn", "why", "fix")
                    .with_evidence(vec!["90% used".into()])],
            },
        );
    }
}
