//! Running a process as another user: the ids and groups of a named user, resolved
//! before a fork, and the drop itself (supplementary groups, gid, uid, then
//! `no_new_privs`) made in the child between fork and exec. The shim drops an app to its
//! user this way; the agent does the same for exec health probes and backup readers, so
//! every process of an app runs with the same identity.

use std::ffi::CString;
use std::os::unix::process::CommandExt;

use nix::unistd::{Gid, Uid, User};

/// A user's ids and supplementary groups, resolved before the fork so [`apply`] only
/// makes syscalls.
///
/// [`apply`]: Credentials::apply
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub uid: Uid,
    pub gid: Gid,
    pub groups: Vec<Gid>,
}

impl Credentials {
    /// The user named `name` with its groups (`getgrouplist`), or `None` if there is no
    /// such user.
    pub fn of(name: &str) -> Option<Credentials> {
        let user = User::from_name(name).ok().flatten()?;
        let cname = CString::new(name).ok()?;
        let groups = nix::unistd::getgrouplist(&cname, user.gid).unwrap_or_else(|_| vec![user.gid]);
        Some(Credentials {
            uid: user.uid,
            gid: user.gid,
            groups,
        })
    }

    /// Whether running as this user changes anything for the calling process.
    pub fn is_other_than_me(&self) -> bool {
        self.uid != nix::unistd::geteuid()
    }

    /// Becomes this user: groups, gid, uid, and no way back up through a setuid binary.
    /// Only raw syscalls on data prepared beforehand: safe between fork and exec.
    pub fn apply(&self) -> std::io::Result<()> {
        nix::unistd::setgroups(&self.groups)?;
        nix::unistd::setgid(self.gid)?;
        nix::unistd::setuid(self.uid)?;
        nix::sys::prctl::set_no_new_privs()?;
        Ok(())
    }

    /// Makes `cmd` run as this user (its own closure, run after std's other set-up).
    pub fn drop_to(&self, cmd: &mut std::process::Command) {
        let creds = self.clone();
        // SAFETY: the closure runs between fork and exec and only makes raw syscalls
        // (setgroups, setgid, setuid, prctl) on data cloned before the fork.
        unsafe {
            cmd.pre_exec(move || creds.apply());
        }
    }
}
