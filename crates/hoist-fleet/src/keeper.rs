//! The keeper that `hoist setup` starts on hosts without systemd (`hoist agent keep`): it
//! runs the agent as a child and starts it again whenever it exits, after a backoff that
//! doubles while the agent keeps failing fast and resets once it ran for a while. When
//! told to stop it sends the agent SIGTERM, waits for it, and returns.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// What to keep running, and how patiently.
#[derive(Debug, Clone)]
pub struct Keeper {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// The first wait before a restart (1 s).
    pub first_backoff: Duration,
    /// The longest wait (30 s).
    pub max_backoff: Duration,
    /// A run at least this long resets the backoff (60 s).
    pub fast_exit: Duration,
}

impl Keeper {
    /// `hoist agent [--config FILE]` with the production backoff.
    pub fn agent(exe: PathBuf, config: Option<PathBuf>) -> Keeper {
        let mut args: Vec<OsString> = vec!["agent".into()];
        if let Some(config) = config {
            args.push("--config".into());
            args.push(config.into_os_string());
        }
        Keeper {
            program: exe,
            args,
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            fast_exit: Duration::from_secs(60),
        }
    }

    /// Keeps the program running until `stop` completes; returns how many times it was
    /// started.
    pub async fn run(&self, stop: impl std::future::Future<Output = ()>) -> u64 {
        tokio::pin!(stop);
        let mut backoff = self.first_backoff;
        let mut starts = 0u64;
        loop {
            let started = tokio::time::Instant::now();
            let spawned = tokio::process::Command::new(&self.program)
                .args(&self.args)
                .spawn();
            let mut child = match spawned {
                Ok(child) => child,
                Err(e) => {
                    tracing::error!(error = %e, program = %self.program.display(), "cannot start the agent");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = &mut stop => return starts,
                    }
                    backoff = (backoff * 2).min(self.max_backoff);
                    continue;
                }
            };
            starts += 1;
            tracing::info!(pid = child.id(), "agent started");
            tokio::select! {
                status = child.wait() => {
                    tracing::warn!(status = ?status.ok(), "the agent exited; starting it again");
                    if started.elapsed() >= self.fast_exit {
                        backoff = self.first_backoff;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = &mut stop => return starts,
                    }
                    backoff = (backoff * 2).min(self.max_backoff);
                }
                _ = &mut stop => {
                    if let Some(pid) = child.id() {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid as i32),
                            nix::sys::signal::Signal::SIGTERM,
                        );
                    }
                    let _ = child.wait().await;
                    tracing::info!("keeper stopped with its agent");
                    return starts;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: String) -> Keeper {
        Keeper {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            first_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
            fast_exit: Duration::from_secs(60),
        }
    }

    #[tokio::test]
    async fn a_program_that_exits_is_started_again() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("runs");
        let keeper = sh(format!("echo run >> {}; exit 3", log.display()));
        let count = || {
            std::fs::read_to_string(&log)
                .map(|s| s.lines().count())
                .unwrap_or(0)
        };
        let stop = async {
            while count() < 4 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let starts = tokio::time::timeout(Duration::from_secs(60), keeper.run(stop))
            .await
            .expect("the keeper stops when told");
        assert!(starts >= 4, "{starts}");
    }

    #[tokio::test]
    async fn stopping_the_keeper_terminates_the_program() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let term = dir.path().join("got-term");
        let keeper = sh(format!(
            "trap 'touch {}; exit 0' TERM; echo $$ > {}; while :; do sleep 0.05; done",
            term.display(),
            pid_file.display()
        ));
        let stop = async {
            while !pid_file.exists() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let starts = tokio::time::timeout(Duration::from_secs(60), keeper.run(stop))
            .await
            .expect("the keeper stops");
        assert_eq!(starts, 1);
        assert!(term.exists(), "the program got SIGTERM and ended");
    }
}
