//! Notices shims ending without asking `/proc` each time: one thread for all of them,
//! woken by a pidfd per shim, rather than a thread per shim (20 instances were 20
//! threads, each with its stack) or a read of each shim's `/proc/PID/stat` five times a
//! second. The shims this process spawned are reaped there too, so none lingers as a
//! zombie; shims adopted from an earlier agent are only watched (they are not our
//! children). Where `pidfd_open` is missing (Linux before 5.3, or a seccomp filter
//! refusing it) a spawned shim gets its own small waiting thread, as before, and an
//! adopted one is not watched: its liveness is read from `/proc` on each check.
//!
//! Only the pids handed to [`reap`] are waited for (`waitpid(pid)`, never `waitpid(-1)`):
//! the agent's other children (hooks, probes, the proxy) are waited for by their owners.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;

use crate::procfs::ProcessId;

/// Set once a watched process has ended (and, if it was our child, been reaped).
#[derive(Debug, Default)]
pub(crate) struct Ended(AtomicBool);

impl Ended {
    pub(crate) fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn set(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// A process the thread watches: its pid, its pidfd, whether it is our child (to be
/// reaped), and the flag to raise when it ends.
struct Watched {
    pid: i32,
    pidfd: OwnedFd,
    child: bool,
    ended: Arc<Ended>,
}

struct Reaper {
    /// Processes handed over since the thread last looked.
    new: Mutex<Vec<Watched>>,
    /// An eventfd the thread polls beside the pidfds, written when `new` grows.
    wake: OwnedFd,
}

static REAPER: OnceLock<Option<Reaper>> = OnceLock::new();

/// Waits for `child` (already spawned, its pipes taken) whenever it ends. The flag is
/// raised once it is reaped; `None` if no thread could be started to wait for it (then
/// its end is read from `/proc`).
pub(crate) fn reap(child: Child) -> Option<Arc<Ended>> {
    let pid = child.id() as i32;
    // Our child is not reaped yet, so `pid` cannot have been reused.
    match (reaper(), pidfd_open(pid)) {
        (Some(r), Some(pidfd)) => {
            // `Child` neither waits nor kills on drop: from here the pid is the reaper's.
            drop(child);
            let ended = Arc::new(Ended::default());
            r.hand_over(Watched {
                pid,
                pidfd,
                child: true,
                ended: ended.clone(),
            });
            Some(ended)
        }
        _ => thread_per_child(child),
    }
}

/// Watches `shim`, a process this one did not spawn (adopted after an agent restart):
/// the flag is raised when it ends. `None` where pidfds are not available.
pub(crate) fn watch(shim: ProcessId) -> Option<Arc<Ended>> {
    let r = reaper()?;
    let pidfd = pidfd_open(shim.pid)?;
    let ended = Arc::new(Ended::default());
    // The pidfd names whatever held the pid when it was opened: checked to be the shim
    // after the open, it is the shim's (a process that ended never comes back, so a
    // match now means the shim held the pid all along).
    if !shim.is_alive() {
        ended.set();
        return Some(ended);
    }
    r.hand_over(Watched {
        pid: shim.pid,
        pidfd,
        child: false,
        ended: ended.clone(),
    });
    Some(ended)
}

fn thread_per_child(mut child: Child) -> Option<Arc<Ended>> {
    let ended = Arc::new(Ended::default());
    let flag = ended.clone();
    let spawned = thread::Builder::new()
        .name(format!("reap-{}", child.id()))
        .stack_size(32 * 1024)
        .spawn(move || {
            let _ = child.wait();
            flag.set();
        });
    match spawned {
        Ok(_) => Some(ended),
        Err(e) => {
            tracing::warn!(error = %e, "cannot start a thread to reap a shim; it may linger as a zombie");
            None
        }
    }
}

impl Reaper {
    fn hand_over(&self, w: Watched) {
        self.new.lock().unwrap_or_else(|p| p.into_inner()).push(w);
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to the eventfd this process owns.
        let _ = unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
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
    // on-exec) that we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: as above.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The reaper thread: sleeps in poll until a watched process ends or a new one is handed
/// over.
fn run(wake: i32) {
    let mut watched: Vec<Watched> = Vec::new();
    let mut fds: Vec<libc::pollfd> = Vec::new();
    loop {
        fds.clear();
        fds.push(libc::pollfd {
            fd: wake,
            events: libc::POLLIN,
            revents: 0,
        });
        fds.extend(watched.iter().map(|w| libc::pollfd {
            fd: w.pidfd.as_raw_fd(),
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
        watched.retain(|w| {
            // A pidfd is readable once its process has exited (a zombie until waited).
            let ready = fds[i].revents != 0;
            i += 1;
            if !ready || (w.child && !waited(w.pid)) {
                return true;
            }
            w.ended.set();
            false
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
        let mut flags = Vec::new();
        for _ in 0..5 {
            let c = Command::new("sh")
                .args(["-c", "sleep 0.2"])
                .spawn()
                .unwrap();
            children.push(c.id());
            flags.push(reap(c).expect("a reaper for the child"));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while children.iter().any(|pid| is_zombie_or_alive(*pid)) || !flags.iter().all(|f| f.get())
        {
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

    #[test]
    fn a_watched_process_that_is_not_our_child_raises_its_flag_when_it_ends() {
        // `sleep` outlives the shell that started it: it is re-parented away from us.
        let out = Command::new("sh")
            .args(["-c", "sleep 1000 >/dev/null 2>&1 & echo $!"])
            .output()
            .unwrap();
        let pid: i32 = String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let id = ProcessId::of(pid).unwrap();
        let guard = scopeguard(pid);
        let ended = watch(id).expect("pidfd_open works on this kernel");
        // Still running a while later: only its end raises the flag.
        thread::sleep(Duration::from_millis(100));
        assert!(!ended.get());
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ended.get() {
            assert!(
                Instant::now() < deadline,
                "the end of a watched process was not noticed"
            );
            thread::sleep(Duration::from_millis(10));
        }
        drop(guard);
        // A process already gone is reported ended at once.
        assert!(watch(id).is_none_or(|e| e.get()));
    }

    /// SIGKILLs `pid` on drop (a failed assertion must not leave the `sleep` behind).
    fn scopeguard(pid: i32) -> impl Drop {
        struct Kill(i32);
        impl Drop for Kill {
            fn drop(&mut self) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(self.0),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        Kill(pid)
    }
}
