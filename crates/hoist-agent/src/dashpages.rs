//! The dashboard's pages (maud: HTML built at compile time, every value escaped), their
//! live fragments (server-sent events) and the confirmed actions. Reads what the API
//! reads; writes only through the same operations the API calls, with the actor
//! `dashboard`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hyper::{Response, StatusCode};
use maud::{html, Markup, PreEscaped, DOCTYPE};

use hoist_protocol::agent::{AppStatus, InstanceStatus, Progress, RollbackRequest};

use crate::dashboard::{self, html as page_answer, Session, Who};
use crate::http::Body;
use crate::Agent;

const ACTOR: &str = "dashboard";
/// History rows on an app's page.
const HISTORY_ROWS: usize = 50;

fn layout(title: &str, apps: &[String], body: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · hoist" }
                link rel="stylesheet" href="/static/dash.css";
                script src="/static/dash.js" defer {}
            }
            body {
                header {
                    a.brand href="/" { "hoist" }
                    a href="/" { "host" }
                    @for app in apps {
                        a href={ "/apps/" (enc(app)) } { (app) }
                    }
                    a href="/events" { "events" }
                }
                main { (body) }
            }
        }
    }
    .into_string()
}

/// A path segment or query value, percent-encoded.
pub(crate) fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

pub(crate) fn refusal(status: StatusCode, message: &str) -> String {
    layout(
        status.canonical_reason().unwrap_or("refused"),
        &[],
        html! {
            h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
            p { (message) }
        },
    )
}

fn when(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

fn bytes(n: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if n as f64 >= 1024.0 * MIB {
        format!("{:.1} GiB", n as f64 / (1024.0 * MIB))
    } else {
        format!("{:.1} MiB", n as f64 / MIB)
    }
}

fn dur(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

fn short(release: &str) -> &str {
    release.get(..12).unwrap_or(release)
}

fn app_names(agent: &Agent) -> Vec<String> {
    agent.db(|s| s.apps()).unwrap_or_default()
}

fn not_found(what: &str) -> Response<Body> {
    page_answer(
        StatusCode::NOT_FOUND,
        refusal(StatusCode::NOT_FOUND, &format!("no such {what}")),
    )
}

/// Every page and live fragment (GET).
pub(crate) async fn get(agent: &Arc<Agent>, who: &Who, path: &str, query: &str) -> Response<Body> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let q = |name: &str| {
        crate::server::query_param(query, name)
            .map(crate::server::percent_decode)
            .filter(|v| !v.is_empty())
    };
    let flash = match who {
        Who::Session(s) => agent.take_flash(s),
        Who::Bearer => None,
    };
    match parts.as_slice() {
        [""] => page_answer(StatusCode::OK, host_page(agent)),
        ["events"] => page_answer(StatusCode::OK, events_page(agent)),
        ["apps", app] => {
            let app = crate::server::percent_decode(app);
            if !app_names(agent).contains(&app) {
                return not_found("app");
            }
            page_answer(StatusCode::OK, app_page(agent, &app, flash))
        }
        ["apps", app, "logs"] => {
            let app = crate::server::percent_decode(app);
            match logs_page(agent, &app, q("service"), q("grep")) {
                Some(p) => page_answer(StatusCode::OK, p),
                None => not_found("app"),
            }
        }
        ["apps", app, "confirm", action] => {
            let app = crate::server::percent_decode(app);
            match confirm_page(agent, who, &app, action, &q) {
                Some(p) => page_answer(StatusCode::OK, p),
                None => not_found("action"),
            }
        }
        ["sse", "host"] => live(agent.clone(), |a| host_live(a).into_string()),
        ["sse", "apps", app] => {
            let app = crate::server::percent_decode(app);
            live(agent.clone(), move |a| app_live(a, &app).into_string())
        }
        ["sse", "events"] => {
            let after = q("after").and_then(|v| v.parse().ok()).unwrap_or(0);
            events_stream(agent.clone(), after)
        }
        ["sse", "logs", app, service] => {
            let app = crate::server::percent_decode(app);
            let service = crate::server::percent_decode(service);
            logs_stream(agent.clone(), app, service, q("grep"))
        }
        _ => not_found("page"),
    }
}

// ---------------------------------------------------------------------------- host

fn host_page(agent: &Agent) -> String {
    let apps = app_names(agent);
    let status = crate::server::status_data(agent);
    let hello = agent.hello();
    let body = html! {
        h1 { "Host " (crate::server::hostname()) }
        p.muted {
            "agent " (hello.version) " · pid " (hello.pid) " · boot " code { (hello.boot) }
            @if let Some(p) = &hello.proxy { " · proxy " code { (p) } }
            " · root " code { (hello.root) }
        }
        @if let Err(e) = &status { p.bad { "cannot read the state: " (e) } }
        div #live data-sse="/sse/host" { (host_live(agent)) }
    };
    layout("host", &apps, body)
}

/// The live part of the host page: apps and every instance.
fn host_live(agent: &Agent) -> Markup {
    let apps = crate::server::status_data(agent)
        .map(|s| s.apps)
        .unwrap_or_default();
    html! {
        section {
            h2 { "Apps" }
            @if apps.is_empty() { p.muted { "nothing deployed on this host yet" } }
            @else {
                table {
                    tr { th { "app" } th { "current" } th { "standby" } th { "instances" } th.hide-sm { "url" } }
                    @for a in &apps {
                        tr {
                            td { a href={ "/apps/" (enc(&a.app)) } { (a.app) } }
                            td.current.mono { (a.release.as_deref().map(short).unwrap_or("—")) }
                            td.standby.mono { (a.standby.as_deref().map(short).unwrap_or("—")) }
                            td { (healthy_count(a)) }
                            td.hide-sm.mono { (a.url.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Instances" }
            (instances_table(apps.iter().flat_map(|a| a.instances.iter()), true))
        }
    }
}

fn healthy_count(a: &AppStatus) -> String {
    let up = a
        .instances
        .iter()
        .filter(|i| matches!(i.state.as_str(), "healthy" | "running"))
        .count();
    format!("{up}/{} up", a.instances.len())
}

fn instances_table<'a>(list: impl Iterator<Item = &'a InstanceStatus>, with_app: bool) -> Markup {
    let list: Vec<_> = list.collect();
    html! {
        @if list.is_empty() { p.muted { "no instances" } }
        @else {
            table {
                tr {
                    th { "instance" } th { "service" } th { "release" } th { "state" }
                    th { "memory" } th { "restarts" } th { "uptime" } th.hide-sm { "pid" } th.hide-sm { "port" }
                }
                @for i in list {
                    tr {
                        td.mono { (i.instance) }
                        td { (i.service) }
                        td.mono { (short(&i.release)) }
                        td class=(i.state) { (i.state) }
                        td { (i.rss_bytes.map(bytes).unwrap_or_default()) }
                        td { (i.restarts) }
                        td { (i.uptime_s.map(dur).unwrap_or_default()) }
                        td.hide-sm { (i.pid.map(|p| p.to_string()).unwrap_or_default()) }
                        td.hide-sm { (i.port.map(|p| p.to_string()).unwrap_or_default()) }
                    }
                }
            }
            @if with_app {}
        }
    }
}

// ----------------------------------------------------------------------------- app

fn app_page(agent: &Agent, app: &str, flash: Option<String>) -> String {
    let apps = app_names(agent);
    let releases = crate::server::releases_data(agent, app);
    let spec = agent.rt().specs.get(app).cloned();
    let current = releases.iter().find(|r| r.role == "current");
    let standby = releases.iter().find(|r| r.role == "standby");
    let job_runs = agent.db(|s| s.job_runs(Some(app), 200)).unwrap_or_default();
    let backups = agent.list_backups(Some(app)).unwrap_or_default();
    let certs: Vec<_> = agent
        .cert_statuses()
        .into_iter()
        .filter(|c| c.app == app)
        .collect();
    let alerts: Vec<_> = agent
        .alert_engine()
        .firing()
        .into_iter()
        .filter(|a| a["labels"]["app"].as_str() == Some(app))
        .collect();
    let secrets = crate::off_workers(|| agent.secrets.names(app)).unwrap_or_default();
    let body = html! {
        h1 { "App " (app) }
        @if let Some(f) = flash {
            p class={ "flash" @if f.contains("failed") || f.contains("refused") { " bad" } } { (f) }
        }
        p {
            "current " span.current.mono { (current.map(|r| short(&r.release)).unwrap_or("—")) }
            @if let Some(s) = standby { " · standby " span.standby.mono { (short(&s.release)) } }
            " · "
            a.btn.danger href={ "/apps/" (enc(app)) "/confirm/rollback" } { "Roll back…" }
            " "
            a.btn href={ "/apps/" (enc(app)) "/logs" } { "Logs" }
        }
        div #live data-sse={ "/sse/apps/" (enc(app)) } { (app_live(agent, app)) }
        (crate::dashcharts::section(agent, app))
        section {
            h2 { "Releases" }
            table {
                tr { th { "release" } th { "role" } th { "commit" } th { "created" } }
                @for r in releases.iter().rev() {
                    tr {
                        td.mono { (r.release) }
                        td class=(r.role) { (r.role) }
                        td.mono { (r.commit.as_deref().map(short).unwrap_or("")) }
                        td { (when(r.created_at_ms)) }
                    }
                }
            }
        }
        @if let Some((_, spec)) = &spec {
            section {
                h2 { "Services" }
                table {
                    tr { th { "service" } th { "replicas" } th { "" } }
                    @for (name, s) in &spec.services {
                        tr {
                            td { (name) }
                            td { (s.replicas) }
                            td {
                                a.btn href={ "/apps/" (enc(app)) "/confirm/restart?service=" (enc(name)) } { "Restart…" }
                                " "
                                a.btn href={ "/apps/" (enc(app)) "/logs?service=" (enc(name)) } { "Logs" }
                            }
                        }
                    }
                }
            }
            section {
                h2 { "Jobs" }
                @if spec.jobs.is_empty() { p.muted { "no jobs" } }
                @else {
                    table {
                        tr { th { "job" } th { "schedule" } th { "last run" } th { "status" } th { "" } }
                        @for (name, j) in &spec.jobs {
                            @let last = job_runs.iter().filter(|r| &r.job == name).max_by_key(|r| r.id);
                            tr {
                                td { (name) }
                                td.mono { (j.schedule.to_string()) }
                                td { (last.map(|r| when(r.started_at_ms)).unwrap_or_else(|| "never".into())) }
                                td class=(last.map(|r| r.status.as_str()).unwrap_or("")) {
                                    (last.map(|r| r.status.as_str()).unwrap_or(""))
                                    @if let Some(c) = last.and_then(|r| r.exit_code) { " (exit " (c) ")" }
                                }
                                td { a.btn href={ "/apps/" (enc(app)) "/confirm/job?job=" (enc(name)) } { "Run…" } }
                            }
                        }
                    }
                }
            }
            section {
                h2 { "Backups" }
                @if spec.backups.is_empty() { p.muted { "no backups configured" } }
                @else {
                    p {
                        @for name in spec.backups.keys() {
                            a.btn href={ "/apps/" (enc(app)) "/confirm/backup?name=" (enc(name)) } { "Back up " (name) "…" }
                            " "
                        }
                    }
                    table {
                        tr { th { "name" } th { "taken" } th { "trigger" } th { "status" } th { "size" } }
                        @for b in backups.iter().rev().take(20) {
                            tr {
                                td { (b.name) }
                                td { (when(b.started_at_ms)) }
                                td { (b.trigger) }
                                td class=(if b.status == "ok" { "ok" } else { b.status.as_str() }) { (b.status) }
                                td { (b.size.map(bytes).unwrap_or_default()) }
                            }
                        }
                    }
                }
            }
        }
        @if !certs.is_empty() {
            section {
                h2 { "Certificates" }
                table {
                    tr { th { "domain" } th { "source" } th { "expires" } th { "serving" } }
                    @for c in &certs {
                        tr {
                            td { (c.domain) }
                            td { (c.source) }
                            td { (c.not_after.as_deref().unwrap_or("—")) }
                            td class=(if c.serving { "ok" } else { "bad" }) { (if c.serving { "yes" } else { "no" }) }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Alerts" }
            @if alerts.is_empty() { p.muted { "none firing" } }
            @for a in &alerts {
                p.bad { (a["summary"].as_str().unwrap_or("alert")) " " span.muted { "since " (a["startsAt"].as_str().unwrap_or("")) } }
            }
        }
        section {
            h2 { "Secrets" }
            @if secrets.is_empty() { p.muted { "none" } }
            @else { p { @for n in &secrets { code { (n) } " " } } }
        }
    };
    layout(app, &apps, body)
}

/// The live part of an app's page: its instances and its history with the chain's check.
fn app_live(agent: &Agent, app: &str) -> Markup {
    let status = crate::server::status_data(agent).ok();
    let instances: Vec<InstanceStatus> = status
        .into_iter()
        .flat_map(|s| s.apps)
        .filter(|a| a.app == app)
        .flat_map(|a| a.instances)
        .collect();
    let history = agent
        .db(|s| s.history(Some(app), HISTORY_ROWS))
        .unwrap_or_default();
    let latest = agent
        .db(|s| s.history(None, 1))
        .ok()
        .and_then(|h| h.last().map(|r| r.seq))
        .unwrap_or(0);
    let verify = verified_chain(agent, latest);
    html! {
        section {
            h2 { "Instances" }
            (instances_table(instances.iter(), false))
        }
        section {
            h2 { "History" }
            p {
                @match &verify {
                    Ok(v) if v.problems.is_empty() => span.ok { "chain verified: " (v.records) " records intact" },
                    Ok(v) => span.bad { "chain broken: " (v.problems.join("; ")) },
                    Err(e) => span.bad { "cannot verify: " (e) },
                }
            }
            table #history {
                tr { th { "#" } th { "when" } th { "kind" } th { "release" } th.hide-sm { "previous" } th { "actor" } th { "result" } th.hide-sm { "took" } th.hide-sm { "reason" } }
                @for h in history.iter().rev() {
                    tr {
                        td { (h.seq) }
                        td { (when(h.at_ms)) }
                        td { (h.kind) }
                        td.mono { (h.release.as_deref().map(short).unwrap_or("")) }
                        td.mono.hide-sm { (h.previous.as_deref().map(short).unwrap_or("")) }
                        td { (h.actor) }
                        td class=(h.result) { (h.result) }
                        td.hide-sm { (format!("{:.1}s", h.duration_ms as f64 / 1000.0)) }
                        td.wrap.hide-sm { (h.reason.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
    }
}

/// The history chain's check, done again when a record was added or a minute has passed:
/// it reads and hashes every record, and an open app page renders its live part every
/// second.
fn verified_chain(agent: &Agent, last_seq: i64) -> Result<hoist_state::VerifyReport, String> {
    let mut cache = agent
        .dash
        .verified
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some((seq, at, report)) = cache.as_ref() {
        if *seq == last_seq && at.elapsed() < Duration::from_secs(60) {
            return Ok(report.clone());
        }
    }
    let report = agent
        .db(|s| s.verify_history())
        .map_err(|e| e.to_string())?;
    *cache = Some((last_seq, std::time::Instant::now(), report.clone()));
    Ok(report)
}

// ---------------------------------------------------------------------------- logs

fn logs_page(
    agent: &Agent,
    app: &str,
    service: Option<String>,
    grep: Option<String>,
) -> Option<String> {
    let apps = app_names(agent);
    if !apps.iter().any(|a| a == app) {
        return None;
    }
    let services: Vec<String> = agent
        .rt()
        .specs
        .get(app)
        .map(|(_, s)| s.services.keys().cloned().collect())
        .unwrap_or_default();
    let service = service
        .filter(|s| services.contains(s))
        .or_else(|| services.first().cloned());
    let body = html! {
        h1 { "Logs of " a href={ "/apps/" (enc(app)) } { (app) } }
        form method="get" action={ "/apps/" (enc(app)) "/logs" } {
            label { "service " select name="service" {
                @for s in &services {
                    option value=(s) selected[Some(s) == service.as_ref()] { (s) }
                }
            } }
            " "
            label { "filter " input type="text" name="grep" value=(grep.as_deref().unwrap_or("")) placeholder="text the line contains"; }
            " "
            button.btn type="submit" { "Show" }
        }
        @match &service {
            Some(s) => {
                @let src = format!("/sse/logs/{}/{}{}", enc(app), enc(s),
                    grep.as_deref().map(|g| format!("?grep={}", enc(g))).unwrap_or_default());
                div.logs #logs data-sse-add=(src) data-follow {}
            }
            None => p.muted { "no current release: no services" },
        }
    };
    Some(layout(&format!("logs of {app}"), &apps, body))
}

fn log_line(l: &hoist_supervisor::LogLine) -> String {
    html! {
        div class={ "l" @if l.stream == "stderr" { " err" } } {
            span.t { (l.t.format("%H:%M:%S%.3f")) } " " span.i { (l.instance) } " " (l.line)
        }
    }
    .into_string()
}

/// The last 200 lines (filtered), then new ones as the shims write them.
fn logs_stream(
    agent: Arc<Agent>,
    app: String,
    service: String,
    grep: Option<String>,
) -> Response<Body> {
    let dir = agent.paths.logs(&app);
    let q = hoist_supervisor::LogQuery {
        since: None,
        grep,
        tail: Some(200),
    };
    let (tx, resp) = dashboard::sse();
    tokio::spawn(async move {
        let started = tokio::task::spawn_blocking(move || {
            hoist_supervisor::Follower::start(&dir, &service, &q)
        })
        .await;
        let Ok(Ok((lines, mut follower))) = started else {
            return;
        };
        for l in &lines {
            if !tx.send(&log_line(l)).await {
                return;
            }
        }
        let mut quiet = 0u32;
        while !tx.is_closed() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let Ok(lines) = follower.poll() else { return };
            if lines.is_empty() {
                quiet += 1;
                // A page that went away is noticed on the next write.
                if quiet % 75 == 0 && !tx.ping().await {
                    return;
                }
            }
            for l in &lines {
                if !tx.send(&log_line(l)).await {
                    return;
                }
            }
        }
    });
    resp
}

// -------------------------------------------------------------------------- events

fn event_row(e: &hoist_state::Event) -> String {
    html! {
        tr {
            td { (e.id) }
            td { (when(e.at_ms)) }
            td { (e.app.as_deref().unwrap_or("")) }
            td { (e.kind) }
            td.wrap { (e.message) }
        }
    }
    .into_string()
}

fn events_page(agent: &Agent) -> String {
    let apps = app_names(agent);
    let all = agent.db(|s| s.events(0, 1_000_000)).unwrap_or_default();
    let last = all.last().map_or(0, |e| e.id);
    let body = html! {
        h1 { "Events" }
        section {
            table {
                thead { tr { th { "#" } th { "when" } th { "app" } th { "kind" } th { "message" } } }
                tbody #events data-sse-add={ "/sse/events?after=" (last) } data-at="afterbegin" {
                    @for e in all.iter().rev().take(200) { (PreEscaped(event_row(e))) }
                }
            }
        }
    };
    layout("events", &apps, body)
}

fn events_stream(agent: Arc<Agent>, mut after: i64) -> Response<Body> {
    let (tx, resp) = dashboard::sse();
    tokio::spawn(async move {
        let mut quiet = 0u32;
        while !tx.is_closed() {
            let batch = agent.db(|s| s.events(after, 500)).unwrap_or_default();
            for e in &batch {
                if !tx.send(&event_row(e)).await {
                    return;
                }
                after = e.id;
            }
            if batch.is_empty() {
                quiet += 1;
                if quiet % 30 == 0 && !tx.ping().await {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    resp
}

/// A fragment sent again whenever it changes (checked every second).
fn live(agent: Arc<Agent>, render: impl Fn(&Agent) -> String + Send + 'static) -> Response<Body> {
    let (tx, resp) = dashboard::sse();
    tokio::spawn(async move {
        let mut last = String::new();
        let mut quiet = 0u32;
        while !tx.is_closed() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = render(&agent);
            if now != last {
                if !tx.send(&now).await {
                    return;
                }
                last = now;
            } else {
                quiet += 1;
                if quiet % 15 == 0 && !tx.ping().await {
                    return;
                }
            }
        }
    });
    resp
}

// ------------------------------------------------------------------------- actions

/// What an action would do, in words, and the fields its form sends; `None` when the
/// app or the thing it names does not exist.
fn describe(
    agent: &Agent,
    app: &str,
    action: &str,
    q: &dyn Fn(&str) -> Option<String>,
) -> Option<(String, Vec<(&'static str, String)>)> {
    let (release, spec) = agent.rt().specs.get(app).cloned()?;
    match action {
        "rollback" => {
            let cur = agent.db(|s| s.current(app)).ok().flatten()?;
            let target = q("release")
                .or_else(|| cur.standby.clone())
                .or_else(|| crate::server::previous_release(agent, app, &cur.release))?;
            Some((
                format!(
                    "Roll back {app} from release {} to release {target}: traffic switches to it{}.",
                    cur.release,
                    if cur.standby.as_deref() == Some(target.as_str()) {
                        " at once (its instances are still warm)"
                    } else {
                        " once its instances are healthy"
                    }
                ),
                vec![("release", target)],
            ))
        }
        "restart" => {
            let service = q("service").filter(|s| spec.services.contains_key(s))?;
            Some((
                format!(
                    "Restart every instance of {app}'s service {service} (release {release}), one at a time, each healthy before the next."
                ),
                vec![("service", service)],
            ))
        }
        "job" => {
            let job = q("job").filter(|j| spec.jobs.contains_key(j))?;
            Some((
                format!("Run {app}'s job {job} now, with release {release}."),
                vec![("job", job)],
            ))
        }
        "backup" => {
            let name = q("name").filter(|n| spec.backups.contains_key(n))?;
            Some((
                format!("Take a backup of {app}'s {name} now."),
                vec![("name", name)],
            ))
        }
        _ => None,
    }
}

fn confirm_page(
    agent: &Agent,
    who: &Who,
    app: &str,
    action: &str,
    q: &dyn Fn(&str) -> Option<String>,
) -> Option<String> {
    let (what, fields) = describe(agent, app, action, q)?;
    let apps = app_names(agent);
    let body = html! {
        h1 { "Confirm" }
        section {
            p #what { (what) }
            @if matches!(who, Who::Bearer) {
                p.bad { "Actions need a browser session: log in with the URL `hoist dashboard` prints." }
            }
            form method="post" action={ "/apps/" (enc(app)) "/do/" (action) } {
                input type="hidden" name="csrf" value=(who.csrf());
                @for (k, v) in &fields { input type="hidden" name=(k) value=(v); }
                button.btn.primary #confirm type="submit" { "Confirm" }
                " "
                a.btn href={ "/apps/" (enc(app)) } { "Cancel" }
            }
        }
    };
    Some(layout("confirm", &apps, body))
}

/// A confirmed action (POST, CSRF already checked): done, its outcome kept for the next
/// page, and the browser sent back to the app's page.
pub(crate) async fn act(
    agent: &Arc<Agent>,
    session: &Session,
    path: &str,
    form: &HashMap<String, String>,
) -> Response<Body> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let ["apps", app, "do", action] = parts.as_slice() else {
        return not_found("action");
    };
    let app = crate::server::percent_decode(app);
    let field = |k: &str| form.get(k).cloned().filter(|v| !v.is_empty());
    // The same check as the confirmation: what does not exist is refused.
    if describe(agent, &app, action, &field).is_none() {
        return not_found("action");
    }
    tracing::info!(app = %app, action, "dashboard action");
    let outcome = match *action {
        "rollback" => rollback(agent, &app, field("release")).await,
        "restart" => {
            let service = field("service").unwrap_or_default();
            let resp = crate::server::service_action(agent, &app, &service, "restart", ACTOR).await;
            match answer_error(resp).await {
                None => Ok(format!("restarted {service}")),
                Some(e) => Err(format!("restart of {service} failed: {e}")),
            }
        }
        "job" => run_job(agent, &app, &field("job").unwrap_or_default()).await,
        "backup" => backup(agent, &app, &field("name").unwrap_or_default()).await,
        _ => return not_found("action"),
    };
    agent.set_flash(session, outcome.unwrap_or_else(|e| e));
    let back = format!("/apps/{}", enc(&app));
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(hyper::header::LOCATION, back)
        .body(http_body_util::BodyExt::boxed(http_body_util::Full::new(
            bytes::Bytes::new(),
        )))
        .expect("static response parts are valid")
}

/// The error message of a non-200 API answer.
async fn answer_error(resp: Response<Body>) -> Option<String> {
    if resp.status() == StatusCode::OK {
        return None;
    }
    let status = resp.status();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    Some(
        serde_json::from_slice::<hoist_protocol::agent::ApiError>(&body)
            .map(|e| e.error)
            .unwrap_or_else(|_| status.to_string()),
    )
}

async fn rollback(
    agent: &Arc<Agent>,
    app: &str,
    release: Option<String>,
) -> Result<String, String> {
    let req = RollbackRequest {
        app: app.to_string(),
        release,
        host: agent.host_name(),
        actor: ACTOR.into(),
        lease: None,
        // Across a migration the agent refuses (409) and the page shows why: what to do
        // with the data is the CLI's choice (`--with-backup` or `--keep-data`).
        data: None,
    };
    let resp = crate::server::rollback(agent.clone(), req).await;
    if resp.status() != StatusCode::OK {
        return Err(format!(
            "rollback refused: {}",
            answer_error(resp).await.unwrap_or_default()
        ));
    }
    // The stream ends with the outcome once the activation is over.
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let done = body.split(|b| *b == b'\n').rev().find_map(|line| {
        match serde_json::from_slice::<Progress>(line) {
            Ok(Progress::Done(o)) => Some(o),
            _ => None,
        }
    });
    match done {
        Some(o) if o.result == "succeeded" => {
            Ok(format!("rolled back to {}", o.release.unwrap_or_default()))
        }
        Some(o) => Err(format!("rollback failed: {}", o.reason.unwrap_or_default())),
        None => Err("rollback failed: the activation ended without an outcome".into()),
    }
}

/// Runs a job now, recorded in the history (kind `job`) with the actor `dashboard`.
async fn run_job(agent: &Arc<Agent>, app: &str, job: &str) -> Result<String, String> {
    let Some((release, spec)) = agent.rt().specs.get(app).cloned() else {
        return Err(format!("job {job} failed: {app} has no current release"));
    };
    let op = agent
        .db(|s| s.begin_operation(app, "job", Some(&release), None, ACTOR))
        .map_err(|e| format!("job {job} failed: cannot record it: {e}"))?;
    let result = agent.run_job(&spec, &release, job, "manual").await;
    let (res, reason) = match &result {
        Ok(run) => ("succeeded", format!("job {job}: run {run} started")),
        Err(e) => ("failed", format!("job {job}: {e}")),
    };
    let finished = agent.db(|s| s.finish_operation(op.id, res, Some(&reason), None));
    agent.noted(Some(app), "record the end of the operation", finished);
    match result {
        Ok(run) => Ok(format!("job {job} started (run {run})")),
        Err(e) => Err(format!("job {job} failed: {e}")),
    }
}

/// Takes one backup now, recorded in the history (kind `backup`) with the actor
/// `dashboard`.
async fn backup(agent: &Arc<Agent>, app: &str, name: &str) -> Result<String, String> {
    let release = agent.rt().specs.get(app).map(|(r, _)| r.clone());
    let op = agent
        .db(|s| s.begin_operation(app, "backup", release.as_deref(), None, ACTOR))
        .map_err(|e| format!("backup {name} failed: cannot record it: {e}"))?;
    let result = agent.take_or_verify(app, Some(name), false).await;
    let (res, reason) = match &result {
        Ok(list) if list.is_empty() => (
            "failed",
            format!("backup {name}: nothing to back up yet (its source does not exist)"),
        ),
        Ok(list) if list.iter().all(|b| b.status == "ok") => (
            "succeeded",
            format!(
                "backup {name}: {}",
                list.iter()
                    .filter_map(|b| b.file.clone())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        Ok(_) => ("failed", format!("backup {name} did not complete")),
        Err(e) => ("failed", format!("backup {name}: {}", crate::chain(e))),
    };
    let finished = agent.db(|s| s.finish_operation(op.id, res, Some(&reason), None));
    agent.noted(Some(app), "record the end of the operation", finished);
    if res == "succeeded" {
        Ok(format!("backup {name} taken"))
    } else {
        Err(reason.replacen(
            &format!("backup {name}"),
            &format!("backup {name} failed"),
            1,
        ))
    }
}
