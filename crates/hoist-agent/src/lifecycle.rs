//! Stopping things on purpose: `hoist down` (an app's instances and routes go away, and
//! the history says so) and `hoist agent stop` (the agent exits; what it supervises keeps
//! running, as on any agent exit, and the next agent re-adopts it).

use std::sync::Arc;

use hoist_protocol::proxy::{Reply, Request};

use crate::Agent;

/// Why `down` did not happen.
#[derive(Debug)]
pub(crate) enum DownError {
    /// Nothing serves the app here.
    NotRunning(String),
    /// A deploy or rollback of the app is running.
    Busy(String),
    /// The state could not record it; nothing was stopped.
    State(String),
}

impl Agent {
    /// Stops every instance of `app` and removes its routes, recorded as a `down`
    /// operation. The current release is cleared first (durably): an agent that dies
    /// half-way leaves recovery to stop the rest, never to start the app again.
    pub(crate) async fn down(
        self: &Arc<Self>,
        app: &str,
        actor: &str,
    ) -> Result<String, DownError> {
        let lock = self.app_lock(app);
        let Ok(_guard) = lock.try_lock_owned() else {
            return Err(DownError::Busy(format!(
                "a deploy of `{app}` is running; try again when it is over"
            )));
        };
        let state_err = |e: hoist_state::StateError| DownError::State(crate::chain(&e));
        let Some(cur) = self.db(|s| s.current(app)).map_err(state_err)? else {
            return Err(DownError::NotRunning(format!(
                "`{app}` has no current release here"
            )));
        };
        let op = self
            .db(|s| s.begin_operation(app, "down", Some(&cur.release), None, actor))
            .map_err(state_err)?;
        if let Err(e) = self.db(|s| s.clear_current(app)) {
            let reason = format!("cannot clear the current release: {}", crate::chain(&e));
            let closed = self.db(|s| s.finish_operation(op.id, "failed", Some(&reason), None));
            self.noted(Some(app), "record the end of the operation", closed);
            return Err(DownError::State(reason));
        }
        self.rt().specs.remove(app);
        // Routes first, so no request is sent to an instance that is stopping.
        let mut problems = Vec::new();
        if let Some(proxy) = &self.proxy {
            let mut ids: Vec<String> = self
                .rt()
                .routes_sent
                .keys()
                .filter(|id| id.split('/').next() == Some(app))
                .cloned()
                .collect();
            if let Ok(Reply::Routes { routes }) = proxy.request(Request::Routes).await {
                ids.extend(routes.into_iter().filter(|r| r.app == app).map(|r| r.id));
            }
            ids.sort();
            ids.dedup();
            for id in ids {
                match proxy.request(Request::RemoveRoute { id: id.clone() }).await {
                    Ok(_) => {
                        self.rt().routes_sent.remove(&id);
                    }
                    Err(e) => problems.push(format!("the proxy kept route `{id}`: {e}")),
                }
            }
        }
        let ids = self.instances_of(app, |_| true);
        let stopped = ids.len();
        self.stop_instances(&ids).await;
        let (result, reason) = if problems.is_empty() {
            (
                "succeeded",
                format!("{stopped} instances stopped, routes removed"),
            )
        } else {
            ("failed", problems.join("; "))
        };
        let closed = self.db(|s| s.finish_operation(op.id, result, Some(&reason), None));
        self.noted(Some(app), "record the end of the operation", closed);
        self.event(
            Some(app),
            &format!("down.{result}"),
            Some(&cur.release),
            &reason,
        );
        if problems.is_empty() {
            Ok(reason)
        } else {
            Err(DownError::State(reason))
        }
    }
}

/// What a rollback does with the app's data (decided by the request and the migrations
/// it crosses, see [`Agent::migrations_between`]).
pub(crate) enum DataPlan {
    /// No migration crossed (or a deploy): nothing to say.
    Untouched,
    /// Restore these `(name, backup id)`: stop the app, restore and check, then start the
    /// target release, in the rollback's own operation. `note` goes in the history.
    Restore {
        backups: Vec<(String, i64)>,
        note: String,
    },
    /// The code goes back, the data does not (`--keep-data`, or restored by another host).
    Note(String),
}

impl DataPlan {
    pub(crate) fn note(&self) -> Option<&str> {
        match self {
            DataPlan::Untouched => None,
            DataPlan::Restore { note, .. } | DataPlan::Note(note) => Some(note),
        }
    }
}

impl Agent {
    /// The deploys of `app` since `target` was last made current that ran `pre_activate`
    /// (whatever their result: the hook changed the data either way), oldest first, each
    /// with the `before_deploy` backups its journal says were taken just before the hook.
    /// A target never made current here (pruned history) is crossed from the start.
    pub(crate) fn migrations_between(
        &self,
        app: &str,
        target: &str,
    ) -> Result<Vec<hoist_protocol::agent::Migration>, hoist_state::StateError> {
        let ops = self.db(|s| s.operations_of(app))?;
        let since = ops
            .iter()
            .rposition(|o| {
                o.result == "succeeded"
                    && (o.kind == "deploy" || o.kind == "rollback")
                    && o.release.as_deref() == Some(target)
            })
            .map_or(0, |i| i + 1);
        let mut out = Vec::new();
        for op in &ops[since..] {
            if op.kind != "deploy" && op.kind != "rollback" {
                continue;
            }
            let Some(release) = op.release.clone() else {
                continue;
            };
            let journal = self.db(|s| s.journal_of(op.id))?;
            if op.kind == "rollback" {
                // A rollback that restored data: moving past it again needs a decision.
                let restored: Vec<&str> = journal
                    .iter()
                    .filter(|j| j.step == "restore" && j.phase == "restored")
                    .filter_map(|j| j.detail.as_deref())
                    .collect();
                if !restored.is_empty() {
                    out.push(hoist_protocol::agent::Migration {
                        release,
                        hook: restored.join("; "),
                        operation: op.id,
                        at_ms: op.finished_at_ms.unwrap_or(op.started_at_ms),
                        backups: Vec::new(),
                        kind: "restore".into(),
                    });
                }
                continue;
            }
            let ran = journal
                .iter()
                .any(|j| j.step == "pre_activate" && j.phase == "end");
            if !ran {
                continue;
            }
            let backups = journal
                .iter()
                .filter(|j| j.step == "backup" && j.phase == "taken")
                .filter_map(|j| {
                    let (name, id) = j.detail.as_deref()?.rsplit_once('=')?;
                    Some(hoist_protocol::agent::MigrationBackup {
                        name: name.to_string(),
                        id: id.parse().ok()?,
                    })
                })
                .collect();
            let hook = self
                .spec_of(app, &release)
                .and_then(|s| s.hooks.pre_activate.clone())
                .unwrap_or_else(|| "pre_activate".into());
            out.push(hoist_protocol::agent::Migration {
                release,
                hook,
                operation: op.id,
                at_ms: op.finished_at_ms.unwrap_or(op.started_at_ms),
                backups,
                kind: "pre_activate".into(),
            });
        }
        Ok(out)
    }
}
