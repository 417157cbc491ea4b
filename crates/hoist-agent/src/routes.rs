//! The HTTP layer over operations of the agent that are callable and tested without it:
//! request parsing, status codes and error answers. The backups' endpoints
//! (`/v1/backups…`, see `hoist_protocol::backup`) over `backup.rs`.

use std::sync::Arc;

use hoist_protocol::backup::{RestoreRequest, TakeRequest};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

use crate::backup::BackupFail;
use crate::http::{self, Body};
use crate::Agent;

fn status(e: &BackupFail) -> StatusCode {
    match e {
        BackupFail::NoApp { .. }
        | BackupFail::NoBackups { .. }
        | BackupFail::NoName { .. }
        | BackupFail::NoBackup { .. }
        | BackupFail::NotUsable { .. } => StatusCode::NOT_FOUND,
        BackupFail::Busy { .. } => StatusCode::CONFLICT,
        BackupFail::NoSecret { .. }
        | BackupFail::BadPath { .. }
        | BackupFail::RemoteCopy { .. }
        | BackupFail::Refused { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn fail(e: &BackupFail) -> Response<Body> {
    http::error(status(e), crate::chain(e), e.hint().as_deref())
}

async fn body<T: serde::de::DeserializeOwned + Default>(
    req: Request<Incoming>,
) -> Result<T, Response<Body>> {
    let bytes = http::read_body(req.into_body(), 64 * 1024)
        .await
        .map_err(|e| http::error(StatusCode::BAD_REQUEST, e, None))?;
    if bytes.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        http::error(
            StatusCode::BAD_REQUEST,
            format!("the request is not valid: {e}"),
            None,
        )
    })
}

/// A restore request, optional only so that an empty body can be told apart.
#[derive(Default, serde::Deserialize)]
#[serde(transparent)]
struct RestoreBody(Option<RestoreRequest>);

/// Every `/v1/backups...` endpoint (see `hoist_protocol::backup`).
pub(crate) async fn backups(agent: Arc<Agent>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let parts: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(str::to_string)
        .collect();
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    let method = req.method().clone();
    match (method, parts.as_slice()) {
        (Method::GET, ["v1", "backups"]) => {
            let q = req.uri().query().unwrap_or("").to_string();
            let app = crate::server::query_param(&q, "app").filter(|a| !a.is_empty());
            match agent.list_backups(app) {
                Ok(list) => http::json(StatusCode::OK, &list),
                Err(e) => fail(&e),
            }
        }
        // Take (`/v1/backups/APP`) or verify (`…/verify`) each named backup, or all.
        (Method::POST, ["v1", "backups", app, rest @ ..]) if matches!(rest, [] | ["verify"]) => {
            let verify = !rest.is_empty();
            let r: TakeRequest = match body(req).await {
                Ok(r) => r,
                Err(resp) => return resp,
            };
            match agent.take_or_verify(app, r.name.as_deref(), verify).await {
                Ok(out) => http::json(StatusCode::OK, &out),
                Err(e) => fail(&e),
            }
        }
        (Method::POST, ["v1", "backups", app, "restore"]) => {
            let r: RestoreBody = match body(req).await {
                Ok(r) => r,
                Err(resp) => return resp,
            };
            let Some(r) = r.0 else {
                return http::error(
                    StatusCode::BAD_REQUEST,
                    "expected {\"name\": \"...\"}",
                    None,
                );
            };
            match agent.restore_backup(app, &r).await {
                Ok(res) => http::json(StatusCode::OK, &res),
                Err(e) => fail(&e),
            }
        }
        _ => http::error(
            StatusCode::NOT_FOUND,
            format!("no such endpoint `{path}`"),
            None,
        ),
    }
}
