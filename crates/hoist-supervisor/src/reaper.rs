//! Reaps the shims this process spawned, so none lingers as a zombie: one thread for all
//! of them, woken by a pidfd per shim, rather than a thread per shim (20 instances were 20
//! threads, each with its stack). Where `pidfd_open` is missing (Linux before 5.3, or a
//! seccomp filter refusing it) a shim gets its own small waiting thread, as before.
//!
//! Only the pids handed to [`reap`] are waited for (`waitpid(pid)`, never `waitpid(-1)`):
//! the agent's other children (hooks, probes, the proxy) are waited for by their owners.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Child;
use std::sync::{Mutex, OnceLock};
use std::thread;

struct Reaper {
    /// Shims handed over since the thread last looked: (pid, pidfd).
    new: Mutex<Vec<(i32, OwnedFd)>>,
    /// An eventfd the thread polls beside the pidfds, written when `new` grows.
    wake: OwnedFd,
}

static REAPER: OnceLock<Option<Reaper>> = OnceLock::new();

/// Waits for `child` (already spawned, its pipes taken) whenever it ends.
pub(crate) fn reap(child: Child) {
    let pid = child.id() as i32;
    match (reaper(), pidfd_open(pid)) {
        (Some(r), Some(pidfd)) => {
            // `Child` neither waits nor kills on drop: from here the pid is the reaper's.
            drop(child);
            r.new
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((pid, pidfd));
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to the eventfd this process owns.
            let _ = unsafe { libc::write(r.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
        _ => thread_per_child(child),
    }
}

fn thread_per_child(mut child: Child) {
    let spawned = thread::Builder::new()
        .name(format!("reap-{}", child.id()))
        .stack_size(32 * 1024)
        .spawn(move || {
            let _ = child.wait();
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start a thread to reap a shim; it may linger as a zombie");
    }
}

fn reaper() -> Option<&'static Reaper> {
    REAPER
        .get_or_init(|| {
            // SAFETY: eventfd takes no pointers; a non-negative result is a new fd we own.
            let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
            if fd < 0 {
                return None;
            }
            // SAFETY: `fd` was just returned by eventfd and nothing else owns it.
            let wake = unsafe { OwnedFd::from_raw_fd(fd) };
            let raw = wake.as_raw_fd();
            thread::Builder::new()
                .name("reap".into())
                .stack_size(64 * 1024)
                .spawn(move || run(raw))
                .ok()?;
            Some(Reaper {
                new: Mutex::new(Vec::new()),
                wake,
            })
        })
        .as_ref()
}

fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags; a non-negative result is a new fd (close-
    // on-exec) that we own. Our child is not reaped yet, so `pid` cannot have been reused.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: as above.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The reaper thread: sleeps in poll until a shim ends or a new one is handed over.
fn run(wake: i32) {
    let mut watched: Vec<(i32, OwnedFd)> = Vec::new();
    let mut fds: Vec<libc::pollfd> = Vec::new();
    loop {
        fds.clear();
        fds.push(libc::pollfd {
            fd: wake,
            events: libc::POLLIN,
            revents: 0,
        });
        fds.extend(watched.iter().map(|(_, fd)| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }));
        // SAFETY: `fds` is a live, correctly sized array of pollfd for the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if rc < 0 {
            // EINTR; anything else (EINVAL, ENOMEM) passes too: look again.
            continue;
        }
        let mut i = 1;
        watched.retain(|(pid, _)| {
            let ready = fds[i].revents != 0;
            i += 1;
            // A pidfd is readable once its process has exited (a zombie until waited).
            !ready || !waited(*pid)
        });
        if fds[0].revents != 0 {
            let mut n: u64 = 0;
            // SAFETY: reads 8 bytes into a live u64 from the eventfd (non-blocking).
            let _ = unsafe { libc::read(wake, (&mut n as *mut u64).cast(), 8) };
            if let Some(r) = REAPER.get().and_then(Option::as_ref) {
                watched.append(&mut r.new.lock().unwrap_or_else(|p| p.into_inner()));
            }
        }
    }
}

/// Waits for `pid` without blocking; true once it is reaped (or is not our child).
fn waited(pid: i32) -> bool {
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes the status into a live i32.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if rc == pid {
            return true;
        }
        if rc == 0 {
            return false;
        }
        if nix::errno::Errno::last() != nix::errno::Errno::EINTR {
            return true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;
    use std::time::{Duration, Instant};

    fn is_zombie_or_alive(pid: u32) -> bool {
        Path::new(&format!("/proc/{pid}")).exists()
    }

    #[test]
    fn every_child_handed_over_is_reaped_by_one_thread_and_no_other_child_is() {
        let mine = Command::new("true").spawn().unwrap();
        let mut children = Vec::new();
        for _ in 0..5 {
            let c = Command::new("sh")
                .args(["-c", "sleep 0.2"])
                .spawn()
                .unwrap();
            children.push(c.id());
            reap(c);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while children.iter().any(|pid| is_zombie_or_alive(*pid)) {
            assert!(
                Instant::now() < deadline,
                "a handed-over child was not reaped"
            );
            thread::sleep(Duration::from_millis(20));
        }
        // One reaper thread, not one per child.
        let reapers = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|c| c.trim_end() == "reap")
            .count();
        assert_eq!(reapers, 1);
        // A child that was not handed over is left for its owner to wait for: it is a
        // zombie (still in /proc) until then, and its exit status is still there.
        thread::sleep(Duration::from_millis(300));
        assert!(is_zombie_or_alive(mine.id()));
        let mut mine = mine;
        assert!(mine.wait().unwrap().success());
    }
}
