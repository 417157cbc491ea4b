//! The API router: one function per endpoint, each a short call into the agent.
//! Only the owner of the socket (or root) may talk to the agent: the socket is 0600 and
//! every connection's peer uid is checked, in case the file mode was changed.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use hoist_protocol::agent::{
    AppStatus, DeployRequest, InstanceStatus, Progress, ReleaseInfo, RollbackRequest, SecretNames,
    SecretValue, Status, Uploaded,
};

use crate::http::{self, Body};
use crate::Agent;

const MAX_JSON_BODY: usize = 4 * 1024 * 1024;

pub(crate) async fn serve(agent: Arc<Agent>, listener: tokio::net::UnixListener) {
    let me = nix::unistd::getuid().as_raw();
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        match http::peer_uid(&stream) {
            Some(uid) if uid == me || uid == 0 => {}
            other => {
                tracing::warn!(peer_uid = ?other, "refused a connection from another user");
                tokio::spawn(refuse(stream, other, me));
                continue;
            }
        }
        let agent = agent.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let agent = agent.clone();
                async move { Ok::<_, std::convert::Infallible>(route(agent, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                // `hoist agent connect` half-closes after the request; answer anyway.
                .half_close(true)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Answers every request of a peer of another uid with 403 and the reason, then closes:
/// a bare close would read as "connection error" and leave the user guessing. Nothing
/// of the request is acted on, and the connection gets a few seconds at most.
async fn refuse(stream: tokio::net::UnixStream, peer: Option<u32>, me: u32) {
    let peer = peer.map_or_else(|| "an unknown uid".to_string(), |u| format!("uid {u}"));
    let message =
        format!("refused: another user ({peer}) may not use this agent, which runs as uid {me}");
    let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
        let answer = http::error(
            StatusCode::FORBIDDEN,
            message.clone(),
            Some("run the command as the agent's user (or root)"),
        );
        async move { Ok::<_, std::convert::Infallible>(answer) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), svc);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), conn).await;
}

/// Every endpoint of the API, as `(method, path template)`: the router answers only
/// these (anything else is 404, or 405 for a known path), and the OpenAPI description
/// (`openapi.rs`) must list exactly these (its test compares them).
pub(crate) const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/hello"),
    ("POST", "/v1/agent/stop"),
    ("POST", "/v1/apps/{app}/down"),
    ("GET", "/v1/status"),
    ("GET", "/v1/certs"),
    ("GET", "/v1/slo"),
    ("GET", "/v1/minutes"),
    ("GET", "/v1/minutes/keys"),
    ("POST", "/v1/alerts/test/{app}"),
    ("GET", "/v1/alerts"),
    ("GET", "/v1/events"),
    ("POST", "/v1/releases"),
    ("GET", "/v1/releases/{app}"),
    ("POST", "/v1/releases/offer"),
    ("POST", "/v1/releases/blobs"),
    ("POST", "/v1/deploy"),
    ("POST", "/v1/plan"),
    ("POST", "/v1/rollback"),
    ("POST", "/v1/rollback/check"),
    ("GET", "/v1/doctor"),
    ("GET", "/v1/jobs"),
    ("POST", "/v1/jobs/{app}/{job}/run"),
    ("POST", "/v1/services/{app}/{service}/{action}"),
    ("GET", "/v1/history"),
    ("GET", "/v1/logs/{app}/{service}"),
    ("POST", "/v1/maintenance/{app}"),
    ("GET", "/v1/secrets/{app}"),
    ("PUT", "/v1/secrets/{app}/{name}"),
    ("DELETE", "/v1/secrets/{app}/{name}"),
    ("GET", "/v1/leases"),
    ("POST", "/v1/leases/{app}"),
    ("POST", "/v1/leases/{app}/renew"),
    ("DELETE", "/v1/leases/{app}"),
    ("GET", "/v1/backups"),
    ("POST", "/v1/backups/{app}"),
    ("POST", "/v1/backups/{app}/verify"),
    ("POST", "/v1/backups/{app}/restore"),
    ("GET", "/v1/dashboard"),
    ("POST", "/v1/dashboard/rotate"),
];

/// The template of `ROUTES` that `parts` (the path split on `/`) matches, ignoring the
/// method; literal segments win over `{params}` (`/v1/releases/offer` is not an app).
pub(crate) fn template_of(method: &str, parts: &[&str]) -> Result<&'static str, bool> {
    let fits = |t: &str| {
        let segs: Vec<&str> = t.trim_start_matches('/').split('/').collect();
        segs.len() == parts.len()
            && segs
                .iter()
                .zip(parts)
                .all(|(s, p)| s == p || (s.starts_with('{') && !p.is_empty()))
    };
    let literal = |t: &str| t.matches('{').count();
    let mut known_path = false;
    let mut best: Option<&'static str> = None;
    for (m, t) in ROUTES {
        if !fits(t) {
            continue;
        }
        known_path = true;
        if *m == method && best.is_none_or(|b| literal(t) < literal(b)) {
            best = Some(t);
        }
    }
    // `Err(true)`: the path exists under another method.
    best.ok_or(known_path)
}

/// The names a path carries (`{app}`, `{service}`, `{job}`, a secret's `{name}`) become
/// file names and lookups: the API holds them to the app file's rules, whoever calls it.
fn names_in_path(template: &str, parts: &[&str]) -> Result<(), String> {
    let segs = template.trim_start_matches('/').split('/');
    for (seg, part) in segs.zip(parts) {
        let ok = match seg {
            "{app}" | "{service}" | "{job}" => hoist_core::names::is_app_name(part),
            "{name}" => hoist_core::names::is_env_name(part),
            _ => true,
        };
        if !ok {
            return Err(format!(
                "invalid {} `{}` in the path",
                seg.trim_matches(['{', '}']),
                part.escape_debug()
            ));
        }
    }
    Ok(())
}

/// A spec that arrives over the API is checked again with the app file's rules: the CLI
/// validated it, but anything that can reach the socket (or the dashboard's `/v1/*`)
/// could have sent it. The answer lists every reason.
fn spec_refused(
    spec: &hoist_core::spec::AppSpec,
    fields: &[(&str, &str)],
) -> Option<Response<Body>> {
    let mut problems = hoist_config::check_spec(spec);
    for (what, v) in fields {
        if v.chars().any(char::is_control) {
            problems.push(format!("invalid `{what}`: it contains a control character"));
        }
    }
    if problems.is_empty() {
        return None;
    }
    tracing::warn!(app = %spec.app.escape_debug(), problems = problems.len(), "refused a spec sent to the API");
    Some(http::error(
        StatusCode::BAD_REQUEST,
        format!("the spec is refused:\n  {}", problems.join("\n  ")),
        Some("validate the app file with `hoist config`"),
    ))
}

fn bad_app(app: &str) -> Response<Body> {
    http::error(
        StatusCode::BAD_REQUEST,
        format!("invalid app name `{}`", app.escape_debug()),
        None,
    )
}

pub(crate) async fn route(agent: Arc<Agent>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = req.method().clone();
    match template_of(method.as_str(), &parts) {
        Ok(template) => {
            if let Err(why) = names_in_path(template, &parts) {
                return http::error(StatusCode::BAD_REQUEST, why, None);
            }
        }
        Err(true) => {
            return http::error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("`{path}` does not take {method}"),
                None,
            )
        }
        Err(false) => {
            return http::error(
                StatusCode::NOT_FOUND,
                format!("no such endpoint `{path}`"),
                None,
            )
        }
    }
    if matches!(
        parts.as_slice(),
        ["v1", "leases", ..] | ["v1", "releases", "offer" | "blobs"]
    ) {
        let query = req.uri().query().unwrap_or("").to_string();
        if let Some(resp) =
            crate::fleet::route(&agent, &method, &parts, &query, req.into_body()).await
        {
            return resp;
        }
        return http::error(
            StatusCode::NOT_FOUND,
            format!("no such endpoint `{path}`"),
            None,
        );
    }
    match (method, parts.as_slice()) {
        (_, ["v1", "backups", ..]) => crate::routes::backups(agent, req).await,
        (Method::GET, ["v1", "hello"]) => http::json(StatusCode::OK, &agent.hello()),
        (Method::POST, ["v1", "agent", "stop"]) => {
            tracing::info!("stop requested over the API");
            // Answered first; the agent ends once the answer is on its way.
            let a = agent.clone();
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                a.stop.notify_one();
            });
            http::json(StatusCode::OK, &agent.hello())
        }
        (Method::POST, ["v1", "apps", app, "down"]) => {
            let q = req.uri().query().unwrap_or("").to_string();
            let actor = query_param(&q, "actor")
                .map(percent_decode)
                .unwrap_or_else(|| "api".into());
            match agent.down(app, &actor).await {
                Ok(summary) => http::json(
                    StatusCode::OK,
                    &serde_json::json!({"app": app, "result": "succeeded", "summary": summary}),
                ),
                Err(crate::lifecycle::DownError::NotRunning(m)) => {
                    http::error(StatusCode::NOT_FOUND, m, None)
                }
                Err(crate::lifecycle::DownError::Busy(m)) => {
                    http::error(StatusCode::CONFLICT, m, None)
                }
                Err(crate::lifecycle::DownError::State(m)) => {
                    http::error(StatusCode::INTERNAL_SERVER_ERROR, m, None)
                }
            }
        }
        (Method::GET, ["v1", "status"]) => match status_data(&agent) {
            Ok(s) => http::json(StatusCode::OK, &s),
            Err(e) => http::error(StatusCode::INTERNAL_SERVER_ERROR, e, None),
        },
        (Method::GET, ["v1", "dashboard"]) => match agent.dashboard_info() {
            Ok(info) => http::json(StatusCode::OK, &info),
            Err(e) => http::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read the dashboard token: {e}"),
                None,
            ),
        },
        (Method::POST, ["v1", "dashboard", "rotate"]) => match agent.rotate_dashboard_token() {
            Ok(info) => http::json(StatusCode::OK, &info),
            Err(e) => http::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot write the dashboard token: {e}"),
                None,
            ),
        },
        (Method::GET, ["v1", "certs"]) => http::json(StatusCode::OK, &agent.cert_statuses()),
        (Method::POST, ["v1", "alerts", "test", app]) => match agent.test_alert(app) {
            Ok(()) => http::json(StatusCode::OK, &serde_json::json!({"sent": true})),
            Err(e) => http::error(StatusCode::UNPROCESSABLE_ENTITY, e, None),
        },
        (Method::GET, ["v1", "alerts"]) => {
            let firing = agent.alert_engine().firing();
            // Deliveries recorded lately (the URL is never in them).
            let recent: Vec<_> = agent
                .db(|s| s.events(0, 100_000))
                .unwrap_or_default()
                .into_iter()
                .filter(|e| e.kind.starts_with("alert."))
                .rev()
                .take(50)
                .collect();
            http::json(
                StatusCode::OK,
                &serde_json::json!({"firing": firing, "recent": recent}),
            )
        }
        (Method::GET, ["v1", "slo"]) => {
            let specs: Vec<(String, std::sync::Arc<hoist_core::spec::AppSpec>)> = agent
                .rt()
                .specs
                .iter()
                .map(|(app, (_, spec))| (app.clone(), spec.clone()))
                .collect();
            let app = query_param(req.uri().query().unwrap_or(""), "app");
            let slos: Vec<_> = specs
                .iter()
                .filter(|(a, _)| app.is_none_or(|x| x == a))
                .flat_map(|(a, spec)| agent.slo_statuses(a, spec))
                .collect();
            http::json(StatusCode::OK, &serde_json::json!({"slos": slos}))
        }
        (Method::GET, ["v1", "minutes"]) => minutes(&agent, req.uri().query().unwrap_or("")),
        (Method::GET, ["v1", "minutes", "keys"]) => {
            let q = req.uri().query().unwrap_or("");
            let since = query_param(q, "since")
                .and_then(|v| v.parse().ok())
                .unwrap_or(crate::minutes::now_s() - 3600);
            match agent.minutes(|m| m.keys(since)) {
                Ok(keys) => http::json(StatusCode::OK, &serde_json::json!({"keys": keys})),
                Err(e) => http::error(StatusCode::INTERNAL_SERVER_ERROR, crate::chain(&e), None),
            }
        }
        (Method::GET, ["v1", "events"]) => events(agent, req.uri().query().unwrap_or("")),
        (Method::POST, ["v1", "releases"]) => {
            let q = req.uri().query().unwrap_or("").to_string();
            upload(agent, &q, req.into_body()).await
        }
        (Method::GET, ["v1", "releases", app]) => releases(&agent, app),
        (Method::POST, ["v1", "deploy"]) => match read_json::<DeployRequest>(req.into_body()).await
        {
            Ok(r) => match spec_refused(&r.spec, &[("host", &r.host), ("actor", &r.actor)]) {
                Some(refused) => refused,
                None => deploy(agent, r).await,
            },
            Err(resp) => resp,
        },
        (Method::POST, ["v1", "plan"]) => {
            match read_json::<hoist_protocol::agent::PlanRequest>(req.into_body()).await {
                Ok(r) => match spec_refused(&r.spec, &[("host", &r.host)]) {
                    Some(refused) => refused,
                    None => match agent.plan(r).await {
                        Ok(plan) => http::json(StatusCode::OK, &plan),
                        Err(e) => http::error(StatusCode::UNPROCESSABLE_ENTITY, e, None),
                    },
                },
                Err(resp) => resp,
            }
        }
        (Method::GET, ["v1", "doctor"]) => http::json(StatusCode::OK, &agent.doctor().await),
        (Method::POST, ["v1", "rollback", "check"]) => {
            match read_json::<RollbackRequest>(req.into_body()).await {
                Ok(r) if !hoist_core::names::is_app_name(&r.app) => bad_app(&r.app),
                Ok(r) => rollback_check(agent, r).await,
                Err(resp) => resp,
            }
        }
        (Method::POST, ["v1", "rollback"]) => {
            match read_json::<RollbackRequest>(req.into_body()).await {
                Ok(r) if !hoist_core::names::is_app_name(&r.app) => bad_app(&r.app),
                Ok(r) => rollback(agent, r).await,
                Err(resp) => resp,
            }
        }
        (Method::GET, ["v1", "jobs"]) => {
            let q = req.uri().query().unwrap_or("").to_string();
            let app = query_param(&q, "app").filter(|a| !a.is_empty());
            match agent.db(|s| s.job_runs(app, 50)) {
                Ok(runs) => http::json(StatusCode::OK, &runs),
                Err(e) => http::error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None),
            }
        }
        (Method::POST, ["v1", "jobs", app, job, "run"]) => run_job(&agent, app, job).await,
        (Method::POST, ["v1", "services", app, service, action]) => {
            service_action(&agent, app, service, action, "api").await
        }
        (Method::GET, ["v1", "history"]) => {
            let q = req.uri().query().unwrap_or("").to_string();
            history(&agent, &q)
        }
        (Method::GET, ["v1", "logs", app, service]) => {
            let q = req.uri().query().unwrap_or("").to_string();
            logs(agent, app, service, &q)
        }
        (Method::POST, ["v1", "maintenance", app]) => {
            let app = app.to_string();
            match read_json::<hoist_protocol::agent::MaintenanceRequest>(req.into_body()).await {
                Ok(r) => {
                    let message = r.on.then(|| {
                        r.message
                            .clone()
                            .unwrap_or_else(|| "This service is down for maintenance.".into())
                    });
                    match agent.set_maintenance(&app, message.clone()).await {
                        Ok(()) => {
                            agent.event(
                                Some(&app),
                                if r.on {
                                    "maintenance.on"
                                } else {
                                    "maintenance.off"
                                },
                                None,
                                if r.on {
                                    "maintenance page on"
                                } else {
                                    "maintenance page off"
                                },
                            );
                            http::json(
                                StatusCode::OK,
                                &hoist_protocol::agent::MaintenanceState {
                                    app,
                                    on: r.on,
                                    message,
                                },
                            )
                        }
                        Err(e) => http::error(StatusCode::CONFLICT, e, None),
                    }
                }
                Err(resp) => resp,
            }
        }
        (Method::GET, ["v1", "secrets", app]) => {
            match crate::off_workers(|| agent.secrets.names(app)) {
                Ok(names) => http::json(
                    StatusCode::OK,
                    &SecretNames {
                        app: app.to_string(),
                        names,
                    },
                ),
                Err(e) => http::error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None),
            }
        }
        (Method::PUT, ["v1", "secrets", app, name]) => {
            let (app, name) = (app.to_string(), name.to_string());
            let body = match http::read_body(req.into_body(), MAX_JSON_BODY).await {
                Ok(b) => b,
                Err(e) => return http::error(StatusCode::BAD_REQUEST, e, None),
            };
            let Ok(v) = serde_json::from_slice::<SecretValue>(&body) else {
                return http::error(
                    StatusCode::BAD_REQUEST,
                    "expected {\"value\": \"...\"}",
                    None,
                );
            };
            match crate::off_workers(|| agent.secrets.set(&app, &name, &v.value)) {
                Ok(()) => {
                    tracing::info!(app = %app, secret = %name, "secret set");
                    http::json(
                        StatusCode::OK,
                        &serde_json::json!({"app": app, "name": name}),
                    )
                }
                Err(e) => http::error(StatusCode::BAD_REQUEST, e.to_string(), None),
            }
        }
        (Method::DELETE, ["v1", "secrets", app, name]) => {
            match crate::off_workers(|| agent.secrets.unset(app, name)) {
                Ok(true) => http::json(
                    StatusCode::OK,
                    &serde_json::json!({"app": app, "name": name}),
                ),
                Ok(false) => http::error(
                    StatusCode::NOT_FOUND,
                    format!("no secret `{name}` for `{app}`"),
                    None,
                ),
                Err(e) => http::error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None),
            }
        }
        _ => http::error(
            StatusCode::NOT_FOUND,
            format!("no such endpoint `{path}`"),
            None,
        ),
    }
}

/// What `GET /v1/status` answers (the dashboard's host page shows the same).
pub(crate) fn status_data(agent: &Agent) -> Result<Status, String> {
    agent.refresh_stats();
    let apps = agent.db(|s| s.apps()).map_err(|e| e.to_string())?;
    let now = std::time::Instant::now();
    let mut out = Vec::new();
    for app in apps {
        let cur = agent.db(|s| s.current(&app)).ok().flatten();
        let instances = agent
            .rt()
            .instances
            .values()
            .filter(|l| l.row.app == app)
            .map(|l| InstanceStatus {
                instance: l.row.instance.clone(),
                service: l.row.service.clone(),
                release: l.row.release.clone(),
                state: l.state_word(now).to_string(),
                pid: l.handle.as_ref().map(|h| h.app_pid() as u32),
                port: l.row.port,
                uptime_s: l
                    .handle
                    .as_ref()
                    .and(l.started)
                    .map(|s| now.saturating_duration_since(s).as_secs()),
                restarts: l.row.restarts.max(0) as u32,
                rss_bytes: l.stats.as_ref().map(|s| s.rss_bytes),
                cpu_s: l.stats.as_ref().map(|s| s.cpu_seconds),
                last_exit: l.last_exit.clone(),
                dropped_lines: l.handle.as_ref().map_or(0, |h| h.dropped_lines()),
            })
            .collect();
        out.push(AppStatus {
            app,
            release: cur.as_ref().map(|c| c.release.clone()),
            standby: cur.and_then(|c| c.standby),
            url: agent.config.proxy.map(|a| format!("http://{a}/")),
            instances,
        });
    }
    Ok(Status {
        host: hostname(),
        agent: agent.hello(),
        apps: out,
    })
}

pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    body: Incoming,
) -> Result<T, Response<Body>> {
    let bytes = http::read_body(body, MAX_JSON_BODY)
        .await
        .map_err(|e| http::error(StatusCode::BAD_REQUEST, e, None))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        http::error(
            StatusCode::BAD_REQUEST,
            format!("the request is not valid: {e}"),
            None,
        )
    })
}

/// `POST /v1/releases`: the body is an artifact; it is written to a temporary file as it
/// arrives, then verified and put into the store in one pass.
///
/// `?app=APP&actor=WHO` (optional, sent by `hoist deploy`): an upload that fails for want
/// of space is then recorded as a failed deploy of APP in the history, as soon as the
/// state database can be written.
async fn upload(agent: Arc<Agent>, query: &str, body: Incoming) -> Response<Body> {
    let (app, actor) = deploy_of(query);
    let tmp = match http::spool(body, &agent.paths.tmp(), "upload-", "the upload").await {
        Ok((path, _)) => path,
        Err(resp) => {
            if resp.status() == StatusCode::INSUFFICIENT_STORAGE {
                if let Some(app) = app {
                    let reason = format!(
                        "the upload could not be stored: the disk is full under `{}`",
                        agent.paths.tmp().display()
                    );
                    record_failed_deploy(agent.clone(), app, actor, reason);
                }
            }
            return *resp;
        }
    };
    let _gate = agent.store_gate.read().await;
    let store = agent.store.clone();
    let path = tmp.to_path_buf();
    let result = tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(&path)?;
        store
            .ingest_artifact(
                std::io::BufReader::new(f),
                &hoist_artifact::Limits::default(),
            )
            .map_err(std::io::Error::other)
    })
    .await;
    drop(tmp);
    let manifest = match result {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => {
            return http::error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("artifact refused: {}", crate::chain(&e)),
                None,
            )
        }
        Err(e) => return http::error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None),
    };
    let summary = manifest.summary();
    let app = manifest.app().to_string();
    let release = manifest.release().as_str().to_string();
    if let Err(e) = crate::fleet::register(&agent, &manifest) {
        return http::error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None);
    }
    tracing::info!(app = %app, release = %release, files = summary.files, "release received");
    http::json(
        StatusCode::OK,
        &Uploaded {
            app,
            release,
            files: summary.files,
            bytes: summary.total_bytes,
        },
    )
}

/// `POST /v1/deploy`: refused at once when another deploy of the app holds the lock;
/// otherwise a stream of progress lines ending with the outcome.
async fn deploy(agent: Arc<Agent>, req: DeployRequest) -> Response<Body> {
    let app = req.spec.app.clone();
    // A fleet deploy's lease stops everyone else before anything is written.
    if let Err(resp) = crate::fleet::check_lease(&agent, &app, req.lease.as_deref()) {
        return *resp;
    }
    let Some(row) = agent.db(|s| s.release(&app, &req.release)).ok().flatten() else {
        return http::error(
            StatusCode::NOT_FOUND,
            format!("release `{}` of `{app}` is not on this host", req.release),
            Some("upload it first (`hoist deploy` does)"),
        );
    };
    let spec_json = serde_json::to_string(&req.spec).unwrap_or_default();
    if let Err(e) = agent.db(|s| s.put_release(&app, &req.release, &row.manifest, &spec_json)) {
        return state_error(&agent, &e);
    }
    let guard = match lock(&agent, &app, &req.actor).await {
        Ok(g) => g,
        Err(resp) => return *resp,
    };
    *agent.host.lock().unwrap_or_else(|p| p.into_inner()) = req.host.clone();
    if let Err(e) = crate::paths::write_atomic(&agent.paths.host_file(), req.host.as_bytes(), 0o600)
    {
        tracing::warn!(error = %e, "cannot record this host's name");
    }
    let (tx, resp) = http::stream();
    tokio::spawn(async move {
        let outcome = agent
            .activate(
                crate::deploy::Kind::Deploy,
                Arc::new(req.spec),
                req.release,
                req.host,
                req.actor,
                tx.clone(),
            )
            .await;
        // Let go before answering: the caller's next deploy may come the instant it reads
        // this line, and must find the app free.
        drop(guard);
        tx.send(&Progress::Done(outcome)).await;
    });
    resp
}

/// Where a rollback of `req.app` goes: the current release, the target and its spec.
type RollbackTarget = (String, String, Arc<hoist_core::spec::AppSpec>);

fn rollback_target(
    agent: &Agent,
    req: &RollbackRequest,
) -> Result<RollbackTarget, Box<Response<Body>>> {
    let cur = agent.db(|s| s.current(&req.app)).ok().flatten();
    let Some(cur) = cur else {
        return Err(Box::new(http::error(
            StatusCode::NOT_FOUND,
            format!("`{}` has never been deployed here", req.app),
            None,
        )));
    };
    let Some(target) = req
        .release
        .clone()
        .or_else(|| cur.standby.clone())
        .or_else(|| previous_release(agent, &req.app, &cur.release))
    else {
        return Err(Box::new(http::error(
            StatusCode::NOT_FOUND,
            "there is no earlier release to go back to",
            None,
        )));
    };
    let Some(spec) = agent.spec_of(&req.app, &target) else {
        return Err(Box::new(http::error(
            StatusCode::NOT_FOUND,
            format!("release `{target}` of `{}` is not kept here", req.app),
            Some("`hoist releases` lists them"),
        )));
    };
    Ok((cur.release, target, spec))
}

/// `POST /v1/rollback/check`: the target and the migrations a rollback would cross.
async fn rollback_check(agent: Arc<Agent>, req: RollbackRequest) -> Response<Body> {
    let (current, target, _) = match rollback_target(&agent, &req) {
        Ok(t) => t,
        Err(resp) => return *resp,
    };
    match agent.migrations_between(&req.app, &target) {
        Ok(migrations) => http::json(
            StatusCode::OK,
            &hoist_protocol::agent::RollbackCheck {
                app: req.app.clone(),
                current,
                target,
                migrations,
            },
        ),
        Err(e) => state_error(&agent, &e),
    }
}

/// What a rollback does with the data, or the 409 that refuses it: crossing a migration
/// needs `--with-backup` (restore the backups taken before the first one crossed) or
/// `--keep-data`.
fn data_plan(
    agent: &Agent,
    req: &RollbackRequest,
    target: &str,
) -> Result<crate::lifecycle::DataPlan, Box<Response<Body>>> {
    use crate::lifecycle::DataPlan;
    use hoist_protocol::agent::RollbackData;
    let migrations = agent
        .migrations_between(&req.app, target)
        .map_err(|e| Box::new(state_error(agent, &e)))?;
    let Some(first) = migrations.first() else {
        return Ok(DataPlan::Untouched);
    };
    let crossed = migrations
        .iter()
        .map(|m| m.describe())
        .collect::<Vec<_>>()
        .join("; ");
    match &req.data {
        None => Err(Box::new(http::error(
            StatusCode::CONFLICT,
            format!("rolling back to `{target}` crosses a migration: {crossed}"),
            Some(
                "`hoist rollback --with-backup` restores that backup as part of the rollback; \
                 `--keep-data` rolls back the code only, on the migrated data",
            ),
        ))),
        Some(RollbackData::KeepData) => Ok(DataPlan::Note(format!(
            "data kept as migrated (--keep-data): {crossed}"
        ))),
        Some(RollbackData::RestoredOn { host, note }) => Ok(DataPlan::Note(format!(
            "data restored on host `{host}`: {note}"
        ))),
        Some(RollbackData::WithBackup) if first.backups.is_empty() => {
            Err(Box::new(http::error(
                StatusCode::CONFLICT,
                format!(
                    "cannot restore: {} (on this host)",
                    first.describe()
                ),
                Some("`--keep-data` rolls back the code only; or restore a backup by hand (`hoist restore`)"),
            )))
        }
        Some(RollbackData::WithBackup) => {
            let backups: Vec<(String, i64)> =
                first.backups.iter().map(|b| (b.name.clone(), b.id)).collect();
            let which = first
                .backups
                .iter()
                .map(|b| format!("`{}` from backup {}", b.name, b.id))
                .collect::<Vec<_>>()
                .join(", ");
            Ok(DataPlan::Restore {
                backups,
                note: format!(
                    "data restored (--with-backup): {which}, taken before release `{}` ran `{}`",
                    first.release, first.hook
                ),
            })
        }
    }
}

pub(crate) async fn rollback(agent: Arc<Agent>, req: RollbackRequest) -> Response<Body> {
    let (_, target, spec) = match rollback_target(&agent, &req) {
        Ok(t) => t,
        Err(resp) => return *resp,
    };
    if let Err(resp) = crate::fleet::check_lease(&agent, &req.app, req.lease.as_deref()) {
        return *resp;
    }
    let data = match data_plan(&agent, &req, &target) {
        Ok(d) => d,
        Err(resp) => return *resp,
    };
    let guard = match lock(&agent, &req.app, &req.actor).await {
        Ok(g) => g,
        Err(resp) => return *resp,
    };
    let (tx, resp) = http::stream();
    tokio::spawn(async move {
        let outcome = agent
            .activate_with(
                crate::deploy::Kind::Rollback,
                spec,
                target,
                req.host,
                req.actor,
                tx.clone(),
                data,
            )
            .await;
        // As for a deploy: free before the answer.
        drop(guard);
        tx.send(&Progress::Done(outcome)).await;
    });
    resp
}

type CurrentSpec = (String, Arc<hoist_core::spec::AppSpec>);

/// The current release of `app` and its spec, or a 404 answer.
fn current_of(agent: &Agent, app: &str) -> Result<CurrentSpec, Box<Response<Body>>> {
    let current = agent.rt().specs.get(app).cloned();
    current.ok_or_else(|| {
        Box::new(http::error(
            StatusCode::NOT_FOUND,
            format!("`{app}` has no current release here"),
            None,
        ))
    })
}

async fn run_job(agent: &Arc<Agent>, app: &str, job: &str) -> Response<Body> {
    let (release, spec) = match current_of(agent, app) {
        Ok(c) => c,
        Err(resp) => return *resp,
    };
    if !spec.jobs.contains_key(job) {
        return http::error(
            StatusCode::NOT_FOUND,
            format!("`{app}` has no job `{job}`"),
            None,
        );
    }
    match agent.run_job(&spec, &release, job, "manual").await {
        Ok(run) => http::json(
            StatusCode::OK,
            &serde_json::json!({"app": app, "job": job, "run": run}),
        ),
        Err(e) => http::error(StatusCode::CONFLICT, e, None),
    }
}

/// `start`, `stop` or `restart` every instance of a service of the current release.
/// A restart goes one instance at a time, each healthy before the next, so a web
/// service keeps serving throughout.
pub(crate) async fn service_action(
    agent: &Arc<Agent>,
    app: &str,
    service: &str,
    action: &str,
    actor: &str,
) -> Response<Body> {
    let (release, spec) = match current_of(agent, app) {
        Ok(c) => c,
        Err(resp) => return *resp,
    };
    if !spec.services.contains_key(service) {
        return http::error(
            StatusCode::NOT_FOUND,
            format!("`{app}` has no service `{service}`"),
            None,
        );
    }
    let ids: Vec<String> = agent
        .rt()
        .instances
        .values()
        .filter(|l| {
            l.row.app == app
                && l.row.service == service
                && l.row.release == release
                && l.row.desired == "run"
        })
        .map(|l| l.row.instance.clone())
        .collect();
    if !matches!(action, "start" | "stop" | "restart") {
        return http::error(
            StatusCode::BAD_REQUEST,
            format!("unknown action `{action}`: expected start, stop or restart"),
            None,
        );
    }
    // Nothing is done that the history could not record.
    let op = match agent.db(|s| s.begin_operation(app, action, Some(&release), None, actor)) {
        Ok(op) => Some(op),
        Err(e) => {
            return http::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot record the operation: {}", crate::chain(&e)),
                None,
            )
        }
    };
    let result: Result<(), String> = match action {
        "stop" => {
            agent.stop_instances(&ids).await;
            agent.sync_routes(app).await;
            Ok(())
        }
        "start" => {
            let host = agent.host_name();
            let only = filtered_spec(&spec, service);
            match agent.add_instances_filtered(&only, &release, &host, &ids) {
                Ok(added) => {
                    for id in added {
                        let a = agent.clone();
                        tokio::spawn(async move { a.start_instance(&id).await });
                    }
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
        "restart" => {
            let mut res = Ok(());
            for id in ids {
                agent.restart_instance(&id).await;
                let deadline = std::time::Instant::now() + spec.deploy.health_deadline;
                loop {
                    let ok = agent
                        .rt()
                        .instances
                        .get(&id)
                        .is_some_and(|l| l.admitted(std::time::Instant::now()));
                    if ok {
                        agent.sync_routes(app).await;
                        break;
                    }
                    if std::time::Instant::now() > deadline {
                        res = Err(format!(
                            "`{id}` did not become healthy again within {:?}",
                            spec.deploy.health_deadline
                        ));
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(25)).await;
                }
                if res.is_err() {
                    break;
                }
            }
            res
        }
        other => Err(format!(
            "unknown action `{other}`: expected start, stop or restart"
        )),
    };
    if let Some(op) = op {
        let finished = agent.db(|s| {
            s.finish_operation(
                op.id,
                if result.is_ok() {
                    "succeeded"
                } else {
                    "failed"
                },
                result.as_ref().err().map(String::as_str),
                None,
            )
        });
        agent.noted(Some(app), "record the end of the operation", finished);
    }
    match result {
        Ok(()) => http::json(
            StatusCode::OK,
            &serde_json::json!({"app": app, "service": service, "action": action}),
        ),
        Err(e) => http::error(StatusCode::CONFLICT, e, None),
    }
}

/// The spec with only `service` left, to start that service's instances alone.
fn filtered_spec(spec: &hoist_core::spec::AppSpec, service: &str) -> hoist_core::spec::AppSpec {
    let mut only = spec.clone();
    only.services.retain(|name, _| name == service);
    only
}

/// The release deployed before `current` (for a rollback outside the standby window).
pub(crate) fn previous_release(agent: &Agent, app: &str, current: &str) -> Option<String> {
    let hist = agent.db(|s| s.history(Some(app), 1000)).ok()?;
    hist.iter()
        .rev()
        .filter(|h| h.result == "succeeded")
        .filter_map(|h| h.release.clone())
        .find(|r| {
            r != current
                && agent
                    .db(|s| s.release(app, r))
                    .ok()
                    .flatten()
                    .is_some_and(|row| row.spec != "null")
        })
}

/// The app and actor a transfer belongs to (`?app=APP&actor=WHO`, sent by `hoist deploy`),
/// so that one that fails for want of space is recorded as a failed deploy of APP.
pub(crate) fn deploy_of(query: &str) -> (Option<String>, String) {
    let safe = |v: &&str| {
        !v.is_empty()
            && v.len() <= 128
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
    };
    // The app is recorded in the history: held to the app file's name rule (`..` is not one).
    let app = query_param(query, "app")
        .filter(|a| hoist_core::names::is_app_name(a))
        .map(str::to_string);
    let actor = query_param(query, "actor")
        .filter(safe)
        .unwrap_or("unknown")
        .to_string();
    (app, actor)
}

/// Records a deploy that failed before it could begin (its upload found no space) in the
/// history. The state database is likely on the same full disk: the record is retried
/// every second (for up to an hour) until it can be written.
pub(crate) fn record_failed_deploy(agent: Arc<Agent>, app: String, actor: String, reason: String) {
    tracing::warn!(app = %app, %reason, "deploy failed before it began");
    tokio::spawn(async move {
        let mut begun: Option<i64> = None;
        for _ in 0..3600 {
            let recorded = agent.db(|st| {
                let id = match begun {
                    Some(id) => Ok(id),
                    None => st
                        .begin_operation(&app, "deploy", None, None, &actor)
                        .map(|op| op.id),
                };
                id.and_then(|id| {
                    begun = Some(id);
                    st.finish_operation(id, "failed", Some(&reason), None)
                })
            });
            match recorded {
                Ok(_) => {
                    agent.event(Some(&app), "deploy.failed", None, &reason);
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cannot record the failed deploy yet");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
    });
}

/// A state error as the CLI sees it: a full disk says which file could not be written
/// and where space must be freed, instead of a bare "state database error".
pub(crate) fn state_error(agent: &Agent, e: &hoist_state::StateError) -> Response<Body> {
    if e.is_disk_full() {
        return http::error(
            StatusCode::INSUFFICIENT_STORAGE,
            format!(
                "the disk is full: cannot write the state database `{}`",
                agent.paths.state_db().display()
            ),
            Some(&format!(
                "free space on the filesystem holding `{}`",
                agent.paths.root.display()
            )),
        );
    }
    if e.is_damaged() {
        return http::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "the state database `{}` is damaged: {e}",
                agent.paths.state_db().display()
            ),
            Some("`hoist doctor` shows what is damaged; docs/runbook/state.integrity.md says how to rebuild it"),
        );
    }
    http::error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None)
}

/// How long a deploy waits for the agent's own work on the app (the end of a standby
/// window, `hoist down`, a restore) before it is refused as busy.
const WAIT_FOR_APP_WORK: std::time::Duration = std::time::Duration::from_secs(60);

/// The app's deploy lock, held: the claim in [`Agent::app_locks`] and the app's mutex.
/// Dropped, the claim goes first, then the mutex: a deploy that comes in between finds no
/// claim and waits the instant the mutex needs.
pub(crate) struct DeployGuard {
    agent: Arc<Agent>,
    app: String,
    _mutex: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for DeployGuard {
    fn drop(&mut self) {
        self.agent.app_locks.release(&self.app);
    }
}

/// Takes the app's deploy lock. A deploy claims the app first (one step under
/// the locks' map lock): a second deploy is refused at once, naming the holder. Then it
/// takes the app's mutex, waiting for the agent's own short work on the app if that holds
/// it (a caller whose previous deploy just answered is never refused). The state's row
/// names the holder across an agent's death and is recovered when a dead agent left it.
async fn lock(
    agent: &Arc<Agent>,
    app: &str,
    actor: &str,
) -> Result<DeployGuard, Box<Response<Body>>> {
    let mutex = match agent.app_locks.claim(app, actor) {
        Ok(m) => m,
        Err((holder, since)) => {
            return Err(Box::new(http::error(
                StatusCode::CONFLICT,
                format!(
                    "a deploy of `{app}` is already running: held by {holder} since {}s ago",
                    (hoist_state::now_ms() - since) / 1000
                ),
                Some("wait for it to finish"),
            )))
        }
    };
    let mut guard = DeployGuard {
        agent: agent.clone(),
        app: app.to_string(),
        _mutex: None,
    };
    let held = match mutex.clone().try_lock_owned() {
        Ok(g) => g,
        Err(_) => {
            tracing::info!(
                app,
                "waiting for the agent's own work on the app before deploying"
            );
            match tokio::time::timeout(WAIT_FOR_APP_WORK, mutex.lock_owned()).await {
                Ok(g) => g,
                Err(_) => {
                    return Err(Box::new(http::error(
                        StatusCode::CONFLICT,
                        format!(
                            "`{app}` is busy with other work of the agent (a standby window ending, `hoist down` or a restore) for over {}s",
                            WAIT_FOR_APP_WORK.as_secs()
                        ),
                        Some("try again in a moment"),
                    )))
                }
            }
        }
    };
    guard._mutex = Some(held);
    match agent.db(|s| s.acquire_lock(app, actor, &agent.boot)) {
        Ok(()) => Ok(guard),
        Err(e) if e.is_disk_full() => Err(Box::new(state_error(agent, &e))),
        Err(e) => Err(Box::new(http::error(
            StatusCode::CONFLICT,
            e.to_string(),
            None,
        ))),
    }
}

fn releases(agent: &Agent, app: &str) -> Response<Body> {
    http::json(StatusCode::OK, &releases_data(agent, app))
}

/// The releases of `app` kept here, each with its role (current, standby, kept).
pub(crate) fn releases_data(agent: &Agent, app: &str) -> Vec<ReleaseInfo> {
    let cur = agent.db(|s| s.current(app)).ok().flatten();
    let rows = agent.db(|s| s.releases(app)).unwrap_or_default();
    rows.into_iter()
        .map(|r| {
            let commit = serde_json::from_str::<serde_json::Value>(&r.manifest)
                .ok()
                .and_then(|m| {
                    m.pointer("/build/commit")
                        .and_then(|c| c.as_str())
                        .map(str::to_string)
                });
            let role = match &cur {
                Some(c) if c.release == r.release => "current",
                Some(c) if c.standby.as_deref() == Some(r.release.as_str()) => "standby",
                _ => "kept",
            };
            ReleaseInfo {
                app: r.app,
                release: r.release,
                created_at_ms: r.created_at_ms,
                commit,
                role: role.into(),
            }
        })
        .collect()
}

fn history(agent: &Agent, query: &str) -> Response<Body> {
    let app = query_param(query, "app").filter(|a| !a.is_empty());
    if query_param(query, "verify").is_some() {
        return match agent.db(|s| s.verify_history()) {
            Ok(r) => http::json(StatusCode::OK, &r),
            Err(e) => http::error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None),
        };
    }
    let limit = query_param(query, "limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(50);
    match agent.db(|s| s.history(app, limit)) {
        Ok(h) => {
            let wire: Vec<hoist_protocol::agent::HistoryRecord> = h
                .into_iter()
                .map(|r| hoist_protocol::agent::HistoryRecord {
                    seq: r.seq,
                    at_ms: r.at_ms,
                    app: r.app,
                    kind: r.kind,
                    release: r.release,
                    previous: r.previous,
                    commit: r.commit,
                    actor: r.actor,
                    result: r.result,
                    duration_ms: r.duration_ms,
                    reason: r.reason,
                })
                .collect();
            http::json(StatusCode::OK, &wire)
        }
        Err(e) => http::error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None),
    }
}

/// `GET /v1/logs/{app}/{service}?tail=N&grep=S&since=MS&follow=1`: stored lines, then
/// (with `follow`) new ones as the shims write them.
fn logs(agent: Arc<Agent>, app: &str, service: &str, query: &str) -> Response<Body> {
    let dir = agent.paths.logs(app);
    let q = hoist_supervisor::LogQuery {
        since: query_param(query, "since")
            .and_then(|s| s.parse::<i64>().ok())
            .and_then(chrono::DateTime::from_timestamp_millis),
        grep: query_param(query, "grep").map(percent_decode),
        tail: query_param(query, "tail").and_then(|t| t.parse().ok()),
    };
    let follow = query_param(query, "follow").is_some_and(|v| v != "0");
    let service = service.to_string();
    let (tx, resp) = http::stream();
    tokio::spawn(async move {
        let started = tokio::task::spawn_blocking({
            let dir = dir.clone();
            let q = q.clone();
            let service = service.clone();
            move || hoist_supervisor::Follower::start(&dir, &service, &q)
        })
        .await;
        let Ok(Ok((lines, mut follower))) = started else {
            return;
        };
        for l in lines {
            if !tx.send(&to_wire(l)).await {
                return;
            }
        }
        while follow && !tx.is_closed() {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let Ok(lines) = follower.poll() else { return };
            for l in lines {
                if !tx.send(&to_wire(l)).await {
                    return;
                }
            }
        }
    });
    resp
}

fn to_wire(l: hoist_supervisor::LogLine) -> hoist_protocol::agent::LogLine {
    hoist_protocol::agent::LogLine {
        t: l.t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        instance: l.instance,
        stream: l.stream,
        line: l.line,
    }
}

/// A query value as sent by a form or `hoist logs --grep`: `+` is a space, `%XX` a byte;
/// bytes that are not UTF-8 are replaced, never sliced through.
pub(crate) fn percent_decode(s: &str) -> String {
    let spaced = s.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}

/// `GET /v1/events?after=N&follow=1`: events after id N as JSON lines; with `follow`,
/// new ones as they are recorded, until the reader goes away.
fn events(agent: Arc<Agent>, query: &str) -> Response<Body> {
    let mut after: i64 = query_param(query, "after")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let follow = query_param(query, "follow").is_some_and(|v| v != "0");
    let (tx, resp) = http::stream();
    tokio::spawn(async move {
        loop {
            let batch = agent.db(|s| s.events(after, 500)).unwrap_or_default();
            for ev in &batch {
                if !tx.send(ev).await {
                    return;
                }
                after = ev.id;
            }
            if batch.len() == 500 {
                continue;
            }
            if !follow || tx.is_closed() {
                return;
            }
            // Events are rare and a poll is one indexed query: simpler than a second
            // notification path that could disagree with the table.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    });
    resp
}

/// `GET /v1/minutes`: a per-minute series (see `minutes.rs`).
fn minutes(agent: &Agent, q: &str) -> Response<Body> {
    let (Some(app), Some(service)) = (query_param(q, "app"), query_param(q, "service")) else {
        return http::error(
            StatusCode::BAD_REQUEST,
            "`app` and `service` are required",
            None,
        );
    };
    let release = query_param(q, "release");
    let since = query_param(q, "since")
        .and_then(|v| v.parse().ok())
        .unwrap_or(crate::minutes::now_s() - 3600);
    let step = query_param(q, "step")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    match agent.minutes(|m| m.series(app, service, release, since, step)) {
        Ok(points) => http::json(StatusCode::OK, &serde_json::json!({"points": points})),
        Err(e) => http::error(StatusCode::INTERNAL_SERVER_ERROR, crate::chain(&e), None),
    }
}

/// The value of `name` in a URL query string (no percent-decoding: values are ids and flags).
pub(crate) fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| match kv.split_once('=') {
        Some((k, v)) if k == name => Some(v),
        None if kv == name => Some("1"),
        _ => None,
    })
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "local".into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_uploads_app_is_held_to_the_app_name_rule() {
        assert_eq!(
            super::deploy_of("app=demo&actor=ci").0.as_deref(),
            Some("demo")
        );
        for bad in ["..", ".", "a.b", "Probe", ""] {
            assert_eq!(super::deploy_of(&format!("app={bad}")).0, None, "{bad}");
        }
    }

    #[test]
    fn percent_decoding_never_slices_through_a_character() {
        assert_eq!(super::percent_decode("%\u{e9}t\u{e9}"), "%\u{e9}t\u{e9}");
        assert_eq!(super::percent_decode("%%\u{20ac}"), "%%\u{20ac}");
        assert_eq!(super::percent_decode("%C3%A9+x"), "\u{e9} x");
        assert_eq!(super::percent_decode("a%e"), "a%e");
    }
}
