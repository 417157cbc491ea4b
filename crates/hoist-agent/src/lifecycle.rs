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
