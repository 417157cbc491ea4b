//! The host's side of a fleet deploy: the app's deploy lease (holder, expiry, heartbeat)
//! and the transfer of a release by content, where the CLI offers a manifest and sends
//! only the blobs this host lacks. The CLI drives; this module only answers.
//!
//! Routes: `GET /v1/leases`, `POST /v1/leases/{app}`, `POST /v1/leases/{app}/renew`,
//! `DELETE /v1/leases/{app}[?token=T]`, `POST /v1/releases/offer?kind=compact|full`,
//! `POST /v1/releases/blobs`.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Response, StatusCode};

use hoist_artifact::transfer;
use hoist_artifact::{Limits, Manifest, Resolved};
use hoist_protocol::fleet::{BlobsStored, Lease, LeaseRequest, Offer, RenewRequest};
use hoist_state::{now_ms, Acquire, LeaseRow};

use crate::http::{self, Body};
use crate::Agent;

/// Largest encoded manifest accepted in an offer (it is zstd-compressed).
const MAX_OFFER: usize = 64 * 1024 * 1024;
/// Longest lease a holder may ask for at once: it must keep renewing.
const MAX_TTL_MS: i64 = 10 * 60 * 1000;
/// How long the blobs of a transfer stay pinned against garbage collection when its
/// sender never comes back to complete it (a completed one lets go at once).
const PIN_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

/// The pin of the blobs an offer of `release` found or was sent (see `Store::pin`).
fn offer_pin(app: &str, release: &str) -> String {
    format!("offer:{app}/{release}")
}

/// The pin of the blobs a stream for `app` brought, until the app's next offer takes
/// them into its own pin (the stream does not say which release it is for).
fn stream_pin(app: Option<&str>) -> String {
    format!("stream:{}", app.unwrap_or("-"))
}

/// Answers the fleet routes; `None` when the path is not one of them.
pub(crate) async fn route(
    agent: &Arc<Agent>,
    method: &Method,
    parts: &[&str],
    query: &str,
    body: Incoming,
) -> Option<Response<Body>> {
    Some(match (method, parts) {
        (&Method::GET, ["v1", "leases"]) => list(agent),
        (&Method::POST, ["v1", "leases", app]) => {
            match crate::server::read_json::<LeaseRequest>(body).await {
                Ok(r) => acquire(agent, app, r),
                Err(resp) => resp,
            }
        }
        (&Method::POST, ["v1", "leases", app, "renew"]) => {
            match crate::server::read_json::<RenewRequest>(body).await {
                Ok(r) => renew(agent, app, r),
                Err(resp) => resp,
            }
        }
        (&Method::DELETE, ["v1", "leases", app]) => release(agent, app, param(query, "token")),
        (&Method::POST, ["v1", "releases", "offer"]) => {
            offer(agent, param(query, "kind").as_deref() == Some("full"), body).await
        }
        (&Method::POST, ["v1", "releases", "blobs"]) => blobs(agent, query, body).await,
        _ => return None,
    })
}

/// Refuses a deploy or rollback of `app` while another holder's lease is live; `token`
/// is the one the request carries (a fleet deploy's own lease lets it through).
pub(crate) fn check_lease(
    agent: &Agent,
    app: &str,
    token: Option<&str>,
) -> Result<(), Box<Response<Body>>> {
    let lease = match agent.db(|s| s.lease(app)) {
        Ok(l) => l,
        Err(e) => {
            return Err(Box::new(http::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                e.to_string(),
                None,
            )))
        }
    };
    match lease {
        Some(l) if l.is_live(now_ms()) && Some(l.token.as_str()) != token => {
            Err(Box::new(http::error(
                StatusCode::CONFLICT,
                held_message(app, &l),
                Some("wait for it to finish, or `hoist lock release` if its holder is gone (it also expires by itself)"),
            )))
        }
        _ => Ok(()),
    }
}

fn held_message(app: &str, l: &LeaseRow) -> String {
    let now = now_ms();
    format!(
        "the deploy lease of `{app}` is held by {} since {}s ago (expires in {}s unless renewed)",
        l.holder,
        (now - l.started_at_ms) / 1000,
        ((l.expires_at_ms - now) / 1000).max(0)
    )
}

fn shown(l: LeaseRow) -> Lease {
    Lease {
        live: l.is_live(now_ms()),
        app: l.name,
        holder: l.holder,
        started_at_ms: l.started_at_ms,
        heartbeat_at_ms: l.heartbeat_at_ms,
        expires_at_ms: l.expires_at_ms,
    }
}

fn internal(e: impl std::fmt::Display) -> Response<Body> {
    http::error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None)
}

fn list(agent: &Agent) -> Response<Body> {
    match agent.db(|s| s.leases()) {
        Ok(rows) => http::json(
            StatusCode::OK,
            &rows.into_iter().map(shown).collect::<Vec<_>>(),
        ),
        Err(e) => internal(e),
    }
}

fn valid_ttl(ttl_ms: i64) -> Result<i64, Box<Response<Body>>> {
    if (1..=MAX_TTL_MS).contains(&ttl_ms) {
        Ok(ttl_ms)
    } else {
        Err(Box::new(http::error(
            StatusCode::BAD_REQUEST,
            format!("a lease lasts 1 ms to {MAX_TTL_MS} ms at a time, not {ttl_ms}"),
            None,
        )))
    }
}

fn acquire(agent: &Arc<Agent>, app: &str, r: LeaseRequest) -> Response<Body> {
    let ttl = match valid_ttl(r.ttl_ms) {
        Ok(t) => t,
        Err(resp) => return *resp,
    };
    if r.token.len() < 16 {
        return http::error(
            StatusCode::BAD_REQUEST,
            "a lease token has at least 16 characters",
            None,
        );
    }
    let result = agent.db(|s| s.acquire_lease(app, &r.holder, &r.token, ttl, now_ms()));
    match result {
        Ok(Acquire::Acquired(l)) => {
            tracing::info!(app, holder = %l.holder, "deploy lease taken");
            if !r.acme_peers.is_empty() {
                let (agent, app) = (agent.clone(), app.to_string());
                tokio::spawn(async move { agent.send_acme_peers(&app, &r.acme_peers).await });
            }
            http::json(StatusCode::OK, &shown(l))
        }
        Ok(Acquire::Held(l)) => http::error(
            StatusCode::CONFLICT,
            held_message(app, &l),
            Some("wait for it to finish, or `hoist lock release` if its holder is gone (it also expires by itself)"),
        ),
        // A deploy that cannot even take its lease for want of space is still a failed
        // deploy: recorded once the state database can be written again.
        Err(e) if e.is_disk_full() => {
            let actor = r.holder.split(" (").next().unwrap_or(&r.holder).to_string();
            let resp = crate::server::state_error(agent, &e);
            crate::server::record_failed_deploy(
                agent.clone(),
                app.to_string(),
                actor,
                format!(
                    "the disk is full: cannot write the state database `{}`",
                    agent.paths.state_db().display()
                ),
            );
            resp
        }
        Err(e) => internal(e),
    }
}

fn renew(agent: &Agent, app: &str, r: RenewRequest) -> Response<Body> {
    let ttl = match valid_ttl(r.ttl_ms) {
        Ok(t) => t,
        Err(resp) => return *resp,
    };
    let result = agent.db(|s| s.renew_lease(app, &r.token, ttl, now_ms()));
    match result {
        Ok(Some(l)) => http::json(StatusCode::OK, &shown(l)),
        Ok(None) => http::error(
            StatusCode::CONFLICT,
            format!("the deploy lease of `{app}` is no longer held by this deploy"),
            None,
        ),
        Err(e) => internal(e),
    }
}

fn release(agent: &Agent, app: &str, token: Option<String>) -> Response<Body> {
    let result = agent.db(|s| s.release_lease(app, token.as_deref()));
    match result {
        Ok(Some(l)) => {
            tracing::info!(app, holder = %l.holder, forced = token.is_none(), "deploy lease released");
            http::json(StatusCode::OK, &shown(l))
        }
        Ok(None) => http::error(
            StatusCode::NOT_FOUND,
            format!("no deploy lease of `{app}` to release here"),
            None,
        ),
        Err(e) => internal(e),
    }
}

/// A manifest offered by the CLI: resolved against this host's store (compact digests
/// by prefix and size; a full manifest by digest). When nothing is missing the release
/// is stored and registered as if its artifact had been uploaded.
async fn offer(agent: &Arc<Agent>, full: bool, body: Incoming) -> Response<Body> {
    let bytes = match http::read_body(body, MAX_OFFER).await {
        Ok(b) => b,
        Err(e) => return http::error(StatusCode::BAD_REQUEST, e, None),
    };
    let _gate = agent.store_gate.read().await;
    let store = agent.store.clone();
    let resolved = tokio::task::spawn_blocking(move || -> Result<Offer2, String> {
        let limits = Limits::default();
        let show = |e: hoist_artifact::ArtifactError| crate::chain(&e);
        if full {
            let m = transfer::decode_manifest(&bytes, &limits).map_err(show)?;
            // Held from this answer on: what the host has now must still be here when the
            // missing rest has arrived, whatever another app's prune collects meanwhile.
            store.pin(
                &offer_pin(m.app(), m.release().as_str()),
                m.blobs(),
                PIN_TTL,
            );
            let missing = transfer::missing_blobs(&m, &store);
            if missing.is_empty() {
                store.put_manifest(&m).map_err(show)?;
                return Ok(Offer2::Complete(m));
            }
            return Ok(Offer2::Missing {
                app: m.app().to_string(),
                release: m.release().as_str().to_string(),
                missing: missing.iter().map(|h| h.to_hex()).collect(),
                need_full: false,
            });
        }
        let compact = transfer::decode_compact_manifest(&bytes, &limits).map_err(show)?;
        let index = transfer::BlobIndex::load(&store).map_err(show)?;
        let mut found = Vec::new();
        let resolved = compact.resolve(|short, size| {
            let hit = index.lookup(short, size);
            found.extend(hit);
            hit
        });
        // As for a full manifest: the blobs found stay until the release is recorded.
        store.pin(&offer_pin(compact.app(), compact.release()), found, PIN_TTL);
        match resolved {
            Ok(Resolved::Complete(m)) => {
                store.put_manifest(&m).map_err(show)?;
                Ok(Offer2::Complete(m))
            }
            Ok(Resolved::Missing(missing)) => Ok(Offer2::Missing {
                app: compact.app().to_string(),
                release: compact.release().to_string(),
                missing,
                need_full: false,
            }),
            // A prefix that matched the wrong blob shows as a release id mismatch.
            Err(_) => Ok(Offer2::Missing {
                app: compact.app().to_string(),
                release: compact.release().to_string(),
                missing: Vec::new(),
                need_full: true,
            }),
        }
    })
    .await;
    match resolved {
        Ok(Ok(Offer2::Complete(m))) => {
            if let Err(e) = register(agent, &m) {
                return internal(e);
            }
            // Recorded: the release's row keeps its blobs from now on.
            agent.store.unpin(&offer_pin(m.app(), m.release().as_str()));
            agent.store.unpin(&stream_pin(Some(m.app())));
            http::json(
                StatusCode::OK,
                &Offer {
                    app: m.app().to_string(),
                    release: m.release().as_str().to_string(),
                    complete: true,
                    missing: Vec::new(),
                    need_full: false,
                },
            )
        }
        Ok(Ok(Offer2::Missing {
            app,
            release,
            missing,
            need_full,
        })) => http::json(
            StatusCode::OK,
            &Offer {
                app,
                release,
                complete: false,
                missing,
                need_full,
            },
        ),
        Ok(Err(e)) => http::error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("manifest refused: {e}"),
            None,
        ),
        Err(e) => internal(e),
    }
}

enum Offer2 {
    Complete(Manifest),
    Missing {
        app: String,
        release: String,
        missing: Vec<String>,
        need_full: bool,
    },
}

/// Records a release whose manifest and blobs are in the store, keeping the spec an
/// earlier deploy stored with it (the spec arrives with the deploy).
pub(crate) fn register(agent: &Agent, m: &Manifest) -> Result<(), hoist_state::StateError> {
    let app = m.app();
    let release = m.release().as_str();
    let manifest_json = String::from_utf8_lossy(&m.to_json()).into_owned();
    agent.db(|state| {
        let spec = state
            .release(app, release)?
            .map(|r| r.spec)
            .unwrap_or_else(|| "null".into());
        state.put_release(app, release, &manifest_json, &spec)
    })
}

/// A blob stream: spooled to a file as it arrives (the body is async, the reader is
/// not), then read into the store, each blob checked against its digest. With
/// `?app=APP&actor=WHO`, a stream that finds no space is recorded as a failed deploy.
async fn blobs(agent: &Arc<Agent>, query: &str, body: Incoming) -> Response<Body> {
    let (app, actor) = crate::server::deploy_of(query);
    let no_space = |why: String| {
        if let Some(app) = app.clone() {
            crate::server::record_failed_deploy(agent.clone(), app, actor.clone(), why);
        }
    };
    let (tmp, received) =
        match http::spool(body, &agent.paths.tmp(), "blobs-", "the blob stream").await {
            Ok(spooled) => spooled,
            Err(resp) => {
                if resp.status() == StatusCode::INSUFFICIENT_STORAGE {
                    no_space(format!(
                        "the release could not be stored: the disk is full under `{}`",
                        agent.paths.tmp().display()
                    ));
                }
                return *resp;
            }
        };
    let _gate = agent.store_gate.read().await;
    let store = agent.store.clone();
    let path = tmp.to_path_buf();
    let pin = stream_pin(app.as_deref());
    // Errors keep whether the disk was full (told apart from a refused stream).
    let result = tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(&path).map_err(|e| (false, e.to_string()))?;
        let got =
            transfer::read_blob_stream(std::io::BufReader::new(f), &store, &Limits::default())
                .map_err(|e| (e.is_disk_full(), crate::chain(&e)))?;
        // Pinned before the gate is let go: no release references them until the next
        // offer completes, and a prune in between must not take them.
        store.pin(&pin, got.iter().copied(), PIN_TTL);
        Ok(got)
    })
    .await;
    drop(tmp);
    match result {
        Ok(Ok(hashes)) => http::json(
            StatusCode::OK,
            &BlobsStored {
                blobs: hashes.len(),
                bytes: received,
            },
        ),
        Ok(Err((true, _))) => {
            let why = format!(
                "the release could not be stored: the disk is full under `{}`",
                agent.paths.root.display()
            );
            no_space(why.clone());
            http::error(StatusCode::INSUFFICIENT_STORAGE, why, None)
        }
        Ok(Err((false, e))) => http::error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("blob stream refused: {e}"),
            None,
        ),
        Err(e) => internal(e),
    }
}

/// One `key=value` of a query string (values here are plain tokens, never encoded).
fn param(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.to_string())
}
