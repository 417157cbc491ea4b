//! A deploy (or rollback) across a fleet: every host's agent is reached, the app's
//! deploy lease is taken on each of them and kept alive by a heartbeat, each host gets
//! the blobs it lacks (in parallel), then activation goes in rolling batches, each batch
//! wholly done before the next. The first failed batch stops the rollout; with
//! `on_failure = "rollback"` the hosts already switched go back to their previous
//! release. Every host's deploy itself is the agent's journaled, all-or-nothing affair:
//! whatever happens to the connection, a host ends on its old release or its new one.
//!
//! What this module decides, the agents do; it never touches a host but through its
//! agent's API, and never prints: progress leaves as [`Event`]s.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use hyper::Method;
use serde::Serialize;
use tokio::sync::mpsc::UnboundedSender;

use hoist_artifact::{transfer, Limits, Manifest};
use hoist_client::{Client, ClientError};
use hoist_core::spec::{AppSpec, OnFailure};
use hoist_protocol::agent::{
    DeployRequest, Hello, Outcome, Progress, RollbackCheck, RollbackData, RollbackRequest, Status,
};
use hoist_protocol::fleet::{BlobsStored, Lease, LeaseRequest, Offer, RenewRequest};

/// One host the CLI drives: its name in the app file and a client for its agent.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub client: Client,
    /// The ssh side of `client`, to explain a failed connection in ssh's terms.
    pub remote: Option<Arc<crate::ssh::Remote>>,
}

impl Target {
    /// A client error as one line; a bridge command's stderr is classified by ssh's rules.
    pub fn explain(&self, e: &ClientError) -> String {
        match self.remote.as_ref().and_then(|r| r.client_error(e)) {
            Some(ssh) => ssh.to_string(),
            None => e.to_string(),
        }
    }
}

/// What happened, as it happens, for the CLI to render (or print as JSON lines).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The host's agent answered.
    Reachable { host: String, version: String },
    /// The host could not be reached before anything changed; it is left out.
    Unreachable { host: String, error: String },
    /// The deploy lease is held on every reachable host.
    Leased { hosts: usize, ttl_ms: i64 },
    /// The host holds the release now; `bytes` is what had to travel.
    Uploaded {
        host: String,
        blobs: usize,
        bytes: u64,
        ms: u64,
    },
    /// Bytes of the blob stream sent to the host so far, out of `total` (a progress
    /// bar's position; frequent, so not part of the JSON lines).
    #[serde(skip)]
    Sending { host: String, sent: u64, total: u64 },
    /// A batch starts.
    Batch { index: usize, hosts: Vec<String> },
    /// A line of the host agent's own progress stream.
    Progress { host: String, progress: Progress },
    /// A host's activation ended.
    Finished { host: String, state: HostState },
    /// A host already switched is being put back.
    RollingBack { host: String },
    /// A singleton was stopped on a host that no longer runs it, before its new host
    /// starts it (never two at once; for a moment, none).
    SingletonStopped {
        host: String,
        service: String,
        moves_to: String,
    },
}

/// Where a host ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum HostState {
    /// It serves the new release.
    Deployed { release: String },
    /// It already served the release: left as it was (a rerun converges).
    Unchanged { release: String },
    /// Its deploy failed; the agent kept (or put back) the old release.
    Failed { reason: String },
    /// It was switched, then put back on its previous release by the fleet rollback.
    RolledBack { release: Option<String> },
    /// The fleet rollback of a switched host failed: it still serves the new release.
    RollbackFailed { reason: String },
    /// Not reachable before the deploy: untouched.
    Unreachable { error: String },
    /// The connection was lost during its activation: the agent finishes or undoes the
    /// deploy on its own, which one is unknown from here.
    Lost { error: String },
    /// A failure earlier in the rollout stopped it before this host's turn: untouched.
    NotStarted,
}

/// One host's line of the summary.
#[derive(Debug, Clone, Serialize)]
pub struct HostReport {
    pub host: String,
    #[serde(flatten)]
    pub state: HostState,
    /// The release it served before.
    pub previous: Option<String>,
    pub ms: u64,
}

/// How a fleet operation ended.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub app: String,
    pub release: String,
    /// `succeeded`, `failed` (every host on its old release) or `partial`.
    pub result: String,
    pub hosts: Vec<HostReport>,
    pub duration_ms: u64,
}

impl Report {
    /// The exit code of design §5: 0, 1 (production unchanged) or 3 (needs attention).
    pub fn exit_code(&self) -> i32 {
        match self.result.as_str() {
            "succeeded" => 0,
            "failed" => 1,
            _ => 3,
        }
    }

    fn judge(app: &str, release: &str, hosts: Vec<HostReport>, started: Instant) -> Report {
        // A host that already ran the release is on the new one and also untouched.
        let all_new = hosts.iter().all(|h| {
            matches!(
                h.state,
                HostState::Deployed { .. } | HostState::Unchanged { .. }
            )
        });
        let all_old = hosts.iter().all(|h| {
            matches!(
                h.state,
                HostState::Failed { .. }
                    | HostState::RolledBack { .. }
                    | HostState::NotStarted
                    | HostState::Unchanged { .. }
            )
        });
        let result = if all_new {
            "succeeded"
        } else if all_old {
            "failed"
        } else {
            "partial"
        };
        Report {
            app: app.to_string(),
            release: release.to_string(),
            result: result.into(),
            hosts,
            duration_ms: started.elapsed().as_millis() as u64,
        }
    }
}

/// Errors that stop a fleet operation before any host changed.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("no host of the app file could be reached")]
    NoHost,
    /// A rollback would run old code on migrated data: refused before anything changed.
    #[error("{message}")]
    CrossesMigration { message: String },
    #[error("host `{host}`: {message}")]
    Lease { host: String, message: String },
    #[error("host `{host}`: the upload failed: {message}")]
    Upload { host: String, message: String },
    #[error("the artifact is of app `{found}`, the app file of `{expected}`")]
    WrongApp { found: String, expected: String },
    #[error("cannot read the artifact `{path}`: {message}")]
    Artifact { path: PathBuf, message: String },
    /// The artifact is not a valid one: nothing was sent anywhere.
    #[error("artifact refused: `{path}`: {message}")]
    Refused { path: PathBuf, message: String },
}

/// Shared by every operation: who acts and how progress is reported.
pub struct Fleet {
    pub targets: Vec<Target>,
    pub actor: String,
    pub events: UnboundedSender<Event>,
    /// How long a lease lives without a heartbeat (the heartbeat runs at a third of it).
    pub lease_ttl: Duration,
    /// The lease held right now (app, token), for a caller interrupted mid-rollout to give
    /// back with [`release_lease`] (the rollout's future is dropped then, not finished).
    pub held: Arc<std::sync::Mutex<Option<(String, String)>>>,
}

/// What to activate on each host.
enum Op {
    Deploy {
        spec: Arc<AppSpec>,
        release: String,
    },
    Rollback {
        app: String,
        release: Option<String>,
        data: Option<RollbackData>,
    },
}

impl Fleet {
    fn set_held(&self, held: Option<(String, String)>) {
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = held;
    }

    fn emit(&self, e: Event) {
        let _ = self.events.send(e);
    }

    /// Asks every agent for its hello in parallel; returns the reachable targets.
    async fn reach(&self) -> (Vec<Target>, Vec<HostReport>) {
        let hellos = join_all(self.targets.iter().map(|t| async move {
            let r =
                tokio::time::timeout(Duration::from_secs(30), t.client.get::<Hello>("/v1/hello"))
                    .await;
            (t, r)
        }))
        .await;
        let mut ok = Vec::new();
        let mut left_out = Vec::new();
        for (t, r) in hellos {
            match r {
                Ok(Ok(h)) => {
                    self.emit(Event::Reachable {
                        host: t.name.clone(),
                        version: h.version,
                    });
                    ok.push(t.clone());
                }
                Ok(Err(e)) => left_out.push(self.unreachable(t, t.explain(&e))),
                Err(_) => left_out.push(self.unreachable(t, "no answer within 30s".into())),
            }
        }
        (ok, left_out)
    }

    fn unreachable(&self, t: &Target, error: String) -> HostReport {
        self.emit(Event::Unreachable {
            host: t.name.clone(),
            error: error.clone(),
        });
        HostReport {
            host: t.name.clone(),
            state: HostState::Unreachable { error },
            previous: None,
            ms: 0,
        }
    }

    /// `spec` with each host's `address` filled from `ssh -G` when it differs from the
    /// host part of `ssh` (an ssh config alias), for an app with ACME certificates: the
    /// hosts' proxies ask each other for HTTP-01 tokens there (the lease hands each host
    /// its peers, and the deployed spec keeps them for the agent's own use).
    async fn with_addresses(&self, spec: &AppSpec) -> AppSpec {
        let mut spec = spec.clone();
        let acme = spec.services.values().any(|s| {
            s.http
                .as_ref()
                .is_some_and(|h| h.tls == Some(hoist_core::spec::TlsSpec::Acme))
        });
        if !acme {
            return spec;
        }
        let resolved = join_all(spec.hosts.iter().map(|h| {
            let remote = self
                .targets
                .iter()
                .find(|t| t.name == h.name)
                .and_then(|t| t.remote.clone());
            let skip = h.address.is_some() || h.files.is_some();
            async move {
                match remote {
                    Some(r) if !skip => r.resolved_host().await,
                    _ => None,
                }
            }
        }))
        .await;
        for (host, addr) in spec.hosts.iter_mut().zip(resolved) {
            if let (Some(addr), Some(ssh)) = (addr, &host.ssh) {
                if addr != ssh.host {
                    host.address = Some(addr);
                }
            }
        }
        spec
    }

    /// Deploys `artifact` (already built) to every host of `spec`.
    pub async fn deploy(&self, spec: &AppSpec, artifact: &Path) -> Result<Report, FleetError> {
        let started = Instant::now();
        let spec = &self.with_addresses(spec).await;
        let manifest = read_manifest(artifact)?;
        if manifest.app() != spec.app {
            return Err(FleetError::WrongApp {
                found: manifest.app().to_string(),
                expected: spec.app.clone(),
            });
        }
        let release = manifest.release().as_str().to_string();
        let (reachable, mut reports) = self.reach().await;
        if reachable.is_empty() {
            return Err(FleetError::NoHost);
        }
        // Placement over the hosts reached: a singleton whose host is unreachable (or
        // gone from the file) moves to the next host of its role.
        let mut placed = spec.clone();
        placed
            .hosts
            .retain(|h| reachable.iter().any(|t| t.name == h.name));
        let lease = self.lease(spec, &reachable).await?;
        let result = async {
            upload_all(self, &reachable, artifact, &manifest).await?;
            let statuses = self.statuses(&reachable).await;
            self.hand_off_singletons(&placed, &reachable, &statuses)
                .await;
            // Hosts already on the release are left alone (and never rolled back).
            let (already, to_roll): (Vec<Target>, Vec<Target>) =
                reachable.iter().cloned().partition(|t| {
                    statuses
                        .get(&t.name)
                        .and_then(|s| s.apps.iter().find(|a| a.app == spec.app))
                        .and_then(|a| a.release.as_deref())
                        == Some(release.as_str())
                });
            let mut reports: Vec<HostReport> = already
                .iter()
                .map(|t| {
                    let state = HostState::Unchanged {
                        release: release.clone(),
                    };
                    self.emit(Event::Finished {
                        host: t.name.clone(),
                        state: state.clone(),
                    });
                    HostReport {
                        host: t.name.clone(),
                        state,
                        previous: Some(release.clone()),
                        ms: 0,
                    }
                })
                .collect();
            let op = Op::Deploy {
                spec: Arc::new(placed),
                release: release.clone(),
            };
            reports.extend(self.roll(spec, &to_roll, &op, &lease.token).await);
            Ok::<_, FleetError>(reports)
        }
        .await;
        lease.release(&reachable).await;
        self.set_held(None);
        reports.extend(result?);
        Ok(Report::judge(
            &spec.app,
            &release,
            order(spec, reports),
            started,
        ))
    }

    /// Rolls every host back to `release` (each host's standby or previous one when
    /// `None`), in the same batches as a deploy.
    ///
    /// Each host is first asked which migrations (deploys that ran `pre_activate`) the
    /// rollback crosses. Crossing one without `data` is refused before anything changes
    /// ([`FleetError::CrossesMigration`]). With `WithBackup`, the host that holds the
    /// backup taken before the first migration rolls back first, restoring it in its own
    /// operation, before any other host switches; the others then roll back their code
    /// with a record of where the data was restored. With `KeepData` every host rolls
    /// back its code only.
    pub async fn rollback(
        &self,
        spec: &AppSpec,
        release: Option<String>,
        data: Option<RollbackData>,
    ) -> Result<Report, FleetError> {
        let started = Instant::now();
        let spec = &self.with_addresses(spec).await;
        let (reachable, mut reports) = self.reach().await;
        if reachable.is_empty() {
            return Err(FleetError::NoHost);
        }
        let checks = self.rollback_checks(&spec.app, &release, &reachable).await;
        let crossing: Vec<(&str, &RollbackCheck)> = checks
            .iter()
            .filter(|(_, c)| !c.migrations.is_empty())
            .map(|(h, c)| (h.as_str(), c))
            .collect();
        let holder = match (&data, crossing.first()) {
            (_, None) => None,
            (None, Some((host, c))) => {
                return Err(FleetError::CrossesMigration {
                    message: format!(
                        "host `{host}`: rolling back to `{}` crosses a migration: {}",
                        c.target,
                        c.migrations
                            .iter()
                            .map(|m| m.describe())
                            .collect::<Vec<_>>()
                            .join("; ")
                    ),
                })
            }
            (Some(RollbackData::WithBackup), Some((host, c))) => {
                // The host whose journal holds the backup taken before the first migration.
                let found = crossing
                    .iter()
                    .find(|(_, c)| c.migrations.first().is_some_and(|m| !m.backups.is_empty()));
                match found {
                    Some((h, c)) => Some((h.to_string(), c.migrations[0].clone())),
                    None => {
                        return Err(FleetError::CrossesMigration {
                            message: format!(
                                "no host holds a backup to restore: host `{host}`: {}",
                                c.migrations[0].describe()
                            ),
                        })
                    }
                }
            }
            (Some(_), Some(_)) => None,
        };
        let lease = self.lease(spec, &reachable).await?;
        let mut rolled = spec.clone();
        // A fleet rollback that fails half-way is not undone by another rollback.
        rolled.deploy.rollout.on_failure = OnFailure::Stop;
        let mut rest: Vec<Target> = reachable.clone();
        let mut others_data = data.clone();
        let mut holder_failed = false;
        if let Some((host, first)) = &holder {
            let t = rest
                .iter()
                .position(|t| &t.name == host)
                .map(|i| rest.remove(i))
                .expect("the holder is a reachable host");
            let op = Op::Rollback {
                app: spec.app.clone(),
                release: release.clone(),
                data: Some(RollbackData::WithBackup),
            };
            self.emit(Event::Batch {
                index: 1,
                hosts: vec![t.name.clone()],
            });
            let r = self.activate(&t, &op, &lease.token).await;
            holder_failed = !matches!(r.state, HostState::Deployed { .. });
            self.emit(Event::Finished {
                host: r.host.clone(),
                state: r.state.clone(),
            });
            reports.push(r);
            others_data = Some(RollbackData::RestoredOn {
                host: host.clone(),
                note: first
                    .backups
                    .iter()
                    .map(|b| format!("`{}` from backup {}", b.name, b.id))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        if holder_failed {
            // The data was not restored: no other host goes back to the old code.
            reports.extend(rest.iter().map(|t| HostReport {
                host: t.name.clone(),
                state: HostState::NotStarted,
                previous: None,
                ms: 0,
            }));
        } else {
            let op = Op::Rollback {
                app: spec.app.clone(),
                release: release.clone(),
                data: others_data,
            };
            reports.extend(self.roll(&rolled, &rest, &op, &lease.token).await);
        }
        lease.release(&reachable).await;
        self.set_held(None);
        let shown = release.unwrap_or_else(|| "previous".into());
        Ok(Report::judge(
            &spec.app,
            &shown,
            order(spec, reports),
            started,
        ))
    }

    /// Each host's answer to `POST /v1/rollback/check`; a host that cannot say (an older
    /// agent, nothing to go back to) is left to refuse or go on in its own rollback.
    async fn rollback_checks(
        &self,
        app: &str,
        release: &Option<String>,
        hosts: &[Target],
    ) -> Vec<(String, RollbackCheck)> {
        let answers = join_all(hosts.iter().map(|t| async move {
            let req = RollbackRequest {
                app: app.to_string(),
                release: release.clone(),
                host: t.name.clone(),
                actor: self.actor.clone(),
                lease: None,
                data: None,
            };
            let r = t
                .client
                .call::<_, RollbackCheck>(Method::POST, "/v1/rollback/check", Some(&req))
                .await;
            (t.name.clone(), r)
        }))
        .await;
        answers
            .into_iter()
            .filter_map(|(h, r)| r.ok().map(|c| (h, c)))
            .collect()
    }

    /// Stops each singleton service on the reachable hosts that run it but are not its
    /// place in `placed`, so that its new host never runs it beside the old one. (A host
    /// that cannot be reached cannot be stopped: that is the one case where a moved
    /// singleton may run twice until the old host is reached again.)
    /// Every host's status, asked at once; a host that does not answer is missing.
    async fn statuses(&self, hosts: &[Target]) -> HashMap<String, Status> {
        join_all(
            hosts.iter().map(|t| async move {
                (t.name.clone(), t.client.get::<Status>("/v1/status").await)
            }),
        )
        .await
        .into_iter()
        .filter_map(|(name, r)| r.ok().map(|s| (name, s)))
        .collect()
    }

    async fn hand_off_singletons(
        &self,
        placed: &AppSpec,
        hosts: &[Target],
        statuses: &HashMap<String, Status>,
    ) {
        let singletons: Vec<(&str, String)> = placed
            .services
            .iter()
            .filter(|(_, s)| s.singleton)
            .filter_map(|(name, _)| {
                let owner = placed.service_hosts(name).first()?.name.clone();
                Some((name.as_str(), owner))
            })
            .collect();
        if singletons.is_empty() {
            return;
        }
        let app = placed.app.as_str();
        join_all(hosts.iter().map(|t| {
            let singletons = &singletons;
            async move {
                let Some(status) = statuses.get(&t.name) else {
                    return;
                };
                let Some(mine) = status.apps.iter().find(|a| a.app == app) else {
                    return;
                };
                for (service, owner) in singletons {
                    let runs = mine
                        .instances
                        .iter()
                        .any(|i| i.service == *service && i.state != "stopped");
                    if !runs || *owner == t.name {
                        continue;
                    }
                    let path = format!("/v1/services/{app}/{service}/stop");
                    let r: Result<serde_json::Value, _> =
                        t.client.call::<(), _>(Method::POST, &path, None).await;
                    match r {
                        Ok(_) => self.emit(Event::SingletonStopped {
                            host: t.name.clone(),
                            service: service.to_string(),
                            moves_to: owner.clone(),
                        }),
                        Err(e) => tracing::warn!(host = %t.name, service, error = %e, "cannot stop a moved singleton"),
                    }
                }
            }
        }))
        .await;
    }

    /// Activation in rolling batches; returns one report per reachable host.
    async fn roll(
        &self,
        spec: &AppSpec,
        hosts: &[Target],
        op: &Op,
        token: &str,
    ) -> Vec<HostReport> {
        let size = spec.deploy.rollout.batch.size(hosts.len()).max(1);
        let mut done: Vec<HostReport> = Vec::new();
        let mut failed = false;
        for (index, batch) in hosts.chunks(size).enumerate() {
            if failed {
                done.extend(batch.iter().map(|t| HostReport {
                    host: t.name.clone(),
                    state: HostState::NotStarted,
                    previous: None,
                    ms: 0,
                }));
                continue;
            }
            self.emit(Event::Batch {
                index: index + 1,
                hosts: batch.iter().map(|t| t.name.clone()).collect(),
            });
            let results = join_all(batch.iter().map(|t| self.activate(t, op, token))).await;
            for r in results {
                failed |= !matches!(r.state, HostState::Deployed { .. });
                self.emit(Event::Finished {
                    host: r.host.clone(),
                    state: r.state.clone(),
                });
                done.push(r);
            }
        }
        if failed && spec.deploy.rollout.on_failure == OnFailure::Rollback {
            let targets: HashMap<&str, &Target> =
                hosts.iter().map(|t| (t.name.as_str(), t)).collect();
            let back = done.iter_mut().filter_map(|r| match r.state {
                HostState::Deployed { .. } => Some((targets[r.host.as_str()], r)),
                _ => None,
            });
            let futures = back.map(|(t, r)| async move {
                self.emit(Event::RollingBack {
                    host: t.name.clone(),
                });
                // Undoing a deploy that just failed: its migration (if any) stays, as it
                // would on one host, and the history says so.
                let op = Op::Rollback {
                    app: spec.app.clone(),
                    release: r.previous.clone(),
                    data: Some(RollbackData::KeepData),
                };
                let back = self.activate(t, &op, token).await;
                r.state = match back.state {
                    HostState::Deployed { release } => HostState::RolledBack {
                        release: Some(release),
                    },
                    HostState::Failed { reason } | HostState::Lost { error: reason } => {
                        HostState::RollbackFailed { reason }
                    }
                    other => other,
                };
                self.emit(Event::Finished {
                    host: r.host.clone(),
                    state: r.state.clone(),
                });
            });
            join_all(futures).await;
        }
        done
    }

    /// One host's deploy or rollback, its progress stream forwarded as events.
    async fn activate(&self, t: &Target, op: &Op, token: &str) -> HostReport {
        let started = Instant::now();
        let mut outcome: Option<Outcome> = None;
        let on_line = |p: Progress| {
            if let Progress::Done(o) = &p {
                outcome = Some(o.clone());
            }
            self.emit(Event::Progress {
                host: t.name.clone(),
                progress: p,
            });
            true
        };
        let sent = match op {
            Op::Deploy { spec, release } => {
                let req = DeployRequest {
                    spec: (**spec).clone(),
                    release: release.clone(),
                    host: t.name.clone(),
                    actor: self.actor.clone(),
                    lease: Some(token.to_string()),
                };
                t.client
                    .stream(Method::POST, "/v1/deploy", Some(&req), on_line)
                    .await
            }
            Op::Rollback { app, release, data } => {
                let req = RollbackRequest {
                    app: app.clone(),
                    release: release.clone(),
                    host: t.name.clone(),
                    actor: self.actor.clone(),
                    lease: Some(token.to_string()),
                    data: data.clone(),
                };
                t.client
                    .stream(Method::POST, "/v1/rollback", Some(&req), on_line)
                    .await
            }
        };
        let ms = started.elapsed().as_millis() as u64;
        let (state, previous) = match (sent, outcome) {
            (_, Some(o)) if o.result == "succeeded" => (
                HostState::Deployed {
                    release: o.release.clone().unwrap_or_default(),
                },
                o.previous,
            ),
            (_, Some(o)) => (
                HostState::Failed {
                    reason: o.reason.unwrap_or_else(|| "the deploy failed".into()),
                },
                o.previous,
            ),
            // Refused before it began (lease, lock, unknown release): nothing changed.
            (Err(ClientError::Api(e, _)), None) => (HostState::Failed { reason: e.error }, None),
            (Err(e), None) => (
                HostState::Lost {
                    error: t.explain(&e),
                },
                None,
            ),
            (Ok(()), None) => (
                HostState::Lost {
                    error: "the agent's answer ended before the outcome".into(),
                },
                None,
            ),
        };
        HostReport {
            host: t.name.clone(),
            state,
            previous,
            ms,
        }
    }

    /// Takes the app's lease on every host at once. If any host refuses, the leases
    /// taken are given back and the refusal (naming the holder) is the error: two
    /// deploys racing for a fleet never wait on each other, at worst both are refused.
    async fn lease(&self, spec: &AppSpec, hosts: &[Target]) -> Result<Held, FleetError> {
        let app = spec.app.as_str();
        let token = random_token();
        let ttl_ms = self.lease_ttl.as_millis() as i64;
        let req = LeaseRequest {
            holder: self.actor.clone(),
            token: token.clone(),
            ttl_ms,
            acme_peers: Vec::new(),
        };
        let path = format!("/v1/leases/{app}");
        let answers = join_all(hosts.iter().map(|t| {
            // Each host learns the others it may ask for HTTP-01 tokens.
            let req = LeaseRequest {
                acme_peers: spec.acme_peer_hosts(&t.name),
                ..req.clone()
            };
            let path = &path;
            async move {
                let r: Result<Lease, _> = t.client.call(Method::POST, path, Some(&req)).await;
                (t, r)
            }
        }))
        .await;
        let mut taken: Vec<Target> = Vec::new();
        let mut refused = None;
        for (t, r) in answers {
            match r {
                Ok(_) => taken.push(t.clone()),
                Err(e) if refused.is_none() => {
                    refused = Some(FleetError::Lease {
                        host: t.name.clone(),
                        message: t.explain(&e),
                    })
                }
                Err(_) => {}
            }
        }
        if let Some(err) = refused {
            let held = Held {
                app: app.to_string(),
                token,
                heartbeat: None,
            };
            held.release(&taken).await;
            return Err(err);
        }
        self.emit(Event::Leased {
            hosts: hosts.len(),
            ttl_ms,
        });
        let renew = RenewRequest {
            token: token.clone(),
            ttl_ms,
        };
        let clients: Vec<(String, Client)> = hosts
            .iter()
            .map(|t| (t.name.clone(), t.client.clone()))
            .collect();
        let every = self.lease_ttl / 3;
        let renew_path = format!("/v1/leases/{app}/renew");
        let heartbeat = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                join_all(clients.iter().map(|(name, c)| {
                    let renew = &renew;
                    let renew_path = &renew_path;
                    async move {
                        let r: Result<Lease, _> =
                            c.call(Method::POST, renew_path, Some(renew)).await;
                        if let Err(e) = r {
                            tracing::warn!(host = %name, error = %e, "lease heartbeat failed");
                        }
                    }
                }))
                .await;
            }
        });
        self.set_held(Some((app.to_string(), token.clone())));
        Ok(Held {
            app: app.to_string(),
            token,
            heartbeat: Some(heartbeat),
        })
    }
}

/// A lease held on a set of hosts, renewed until released.
struct Held {
    app: String,
    token: String,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
}

impl Held {
    async fn release(self, hosts: &[Target]) {
        if let Some(h) = &self.heartbeat {
            h.abort();
        }
        release_lease(hosts, &self.app, &self.token).await;
    }
}

/// Gives the lease `token` of `app` back on every host (a host where it is not held by
/// this token keeps what it has).
pub async fn release_lease(hosts: &[Target], app: &str, token: &str) {
    let path = format!("/v1/leases/{app}?token={token}");
    join_all(hosts.iter().map(|t| {
        let path = &path;
        async move {
            let r: Result<Lease, _> = t.client.call::<(), _>(Method::DELETE, path, None).await;
            if let Err(e) = r {
                // It expires by itself; a host that went away keeps it until then.
                tracing::warn!(host = %t.name, error = %e, "cannot release the lease");
            }
        }
    }))
    .await;
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(h) = &self.heartbeat {
            h.abort();
        }
    }
}

/// Reports in the app file's host order.
fn order(spec: &AppSpec, mut reports: Vec<HostReport>) -> Vec<HostReport> {
    let pos = |name: &str| spec.hosts.iter().position(|h| h.name == name);
    reports.sort_by_key(|r| pos(&r.host));
    reports
}

fn read_manifest(artifact: &Path) -> Result<Manifest, FleetError> {
    hoist_artifact::read_manifest(artifact, &Limits::default()).map_err(|e| FleetError::Refused {
        path: artifact.to_path_buf(),
        message: e.to_string(),
    })
}

/// 32 random hex digits.
fn random_token() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No entropy source: the pid and clock still tell holders apart (the token
        // guards against mistakes, not attackers).
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        return format!("{:08x}{:024x}", std::process::id(), nanos & ((1 << 96) - 1));
    }
    hex::encode(bytes)
}

/// Puts the release on every host in parallel: each is offered the compact manifest
/// and sent only the blobs it lacks. Hosts that lack the same blobs share one pack.
async fn upload_all(
    fleet: &Fleet,
    hosts: &[Target],
    artifact: &Path,
    manifest: &Manifest,
) -> Result<(), FleetError> {
    let dir = tempfile::tempdir().map_err(|e| FleetError::Artifact {
        path: artifact.to_path_buf(),
        message: format!("cannot make a temporary directory: {e}"),
    })?;
    let compact = dir.path().join("compact");
    let full = dir.path().join("full");
    let written = std::fs::write(&compact, transfer::encode_compact_manifest(manifest))
        .and_then(|()| std::fs::write(&full, transfer::encode_manifest(manifest)));
    if let Err(e) = written {
        return Err(FleetError::Artifact {
            path: artifact.to_path_buf(),
            message: format!("cannot write the manifest: {e}"),
        });
    }
    let packs = Packs {
        dir: dir.path().to_path_buf(),
        artifact: artifact.to_path_buf(),
        made: tokio::sync::Mutex::new(HashMap::new()),
    };
    let (compact, full, packs) = (&compact, &full, &packs);
    let results = join_all(hosts.iter().map(|t| async move {
        let started = Instant::now();
        // The app and actor let a host record an upload that finds no space as a
        // failed deploy in its history.
        let actor: String = fleet
            .actor
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || "-_.@".contains(*c))
            .collect();
        let blobs = format!("/v1/releases/blobs?app={}&actor={actor}", manifest.app());
        let r = upload_one(t, compact, full, packs, &blobs, fleet.events.clone()).await;
        (t, r, started.elapsed())
    }))
    .await;
    for (t, r, took) in results {
        match r {
            Ok((blobs, bytes)) => fleet.emit(Event::Uploaded {
                host: t.name.clone(),
                blobs,
                bytes,
                ms: took.as_millis() as u64,
            }),
            Err(message) => {
                return Err(FleetError::Upload {
                    host: t.name.clone(),
                    message,
                })
            }
        }
    }
    Ok(())
}

/// Blob streams packed from the artifact, one per distinct set of missing blobs:
/// (full digests?, the digests) → (the pack file, its size).
struct Packs {
    dir: PathBuf,
    artifact: PathBuf,
    made: tokio::sync::Mutex<HashMap<PackKey, (PathBuf, u64)>>,
}

type PackKey = (bool, Vec<String>);

impl Packs {
    /// The pack holding `missing` (short digests, or full ones when `full`).
    async fn get(&self, full: bool, missing: &[String]) -> Result<(PathBuf, u64), String> {
        let key = (full, missing.to_vec());
        let mut made = self.made.lock().await;
        if let Some(p) = made.get(&key) {
            return Ok(p.clone());
        }
        let path = self.dir.join(format!("pack-{}", made.len()));
        let (artifact, out, wanted) = (self.artifact.clone(), path.clone(), missing.to_vec());
        let bytes = tokio::task::spawn_blocking(move || -> Result<u64, String> {
            let file = std::fs::File::create(&out).map_err(|e| e.to_string())?;
            let w = std::io::BufWriter::new(file);
            let limits = Limits::default();
            let r = if full {
                let hashes = wanted
                    .iter()
                    .map(|h| {
                        hoist_artifact::Hash::parse(h).ok_or_else(|| format!("bad digest `{h}`"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                transfer::pack_for_transfer(&artifact, &hashes, w, &limits)
            } else {
                transfer::pack_for_transfer_short(&artifact, &wanted, w, &limits)
            };
            r.map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())??;
        made.insert(key, (path.clone(), bytes));
        Ok((path, bytes))
    }
}

/// Offer, send what is missing, offer again. Returns (blobs sent, bytes sent).
async fn upload_one(
    t: &Target,
    compact: &Path,
    full: &Path,
    packs: &Packs,
    blobs_path: &str,
    events: UnboundedSender<Event>,
) -> Result<(usize, u64), String> {
    let offer = |kind: &'static str| async move {
        let path = if kind == "full" { full } else { compact };
        t.client
            .upload::<Offer>(&format!("/v1/releases/offer?kind={kind}"), path)
            .await
            .map_err(|e| t.explain(&e))
    };
    let mut kind = "compact";
    let mut sent = (0usize, 0u64);
    for _ in 0..3 {
        let o = offer(kind).await?;
        if o.complete {
            return Ok(sent);
        }
        if o.need_full {
            kind = "full";
            continue;
        }
        let (pack, bytes) = packs.get(kind == "full", &o.missing).await?;
        let (host, events) = (t.name.clone(), events.clone());
        let stored: BlobsStored = t
            .client
            .upload_progress(blobs_path, &pack, move |sent| {
                let _ = events.send(Event::Sending {
                    host: host.clone(),
                    sent,
                    total: bytes,
                });
            })
            .await
            .map_err(|e| t.explain(&e))?;
        sent = (sent.0 + stored.blobs, sent.1 + bytes);
    }
    Err("the host still lacks blobs after they were sent".into())
}
