//! PostgreSQL through its own tools: `pg_dump --format=custom` to a file, `pg_restore
//! --clean --if-exists --no-owner` back, and per-table row counts with `psql`.
//!
//! The connection URL (a secret) is split into libpq's environment variables (`PGHOST`,
//! `PGUSER`, `PGPASSWORD`, ...) for each tool: it never appears in a command line (where
//! `ps` shows it to every user), and only its redacted form
//! (`postgres://user:***@host/db`) appears in errors. The tools are found on `PATH`, or
//! in `HOIST_PG_BIN` when set.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use hoist_supervisor::creds::Credentials;

use crate::file::{self, Sealed};
use crate::{BackupError, Checked, Result};

/// A parsed connection URL: the environment that points libpq at the database.
#[derive(Clone)]
pub struct PgTarget {
    env: Vec<(&'static str, String)>,
    password: Option<String>,
    database: String,
    shown: String,
    /// Who runs the tools (`None`: this process's user).
    user: Option<Credentials>,
}

/// What a tool reads on stdin.
enum Input<'a> {
    Null,
    Text(&'a str),
    /// An open file: a dump the tool could not open by name (the agent's, 0600) is
    /// handed over as a descriptor.
    File(std::fs::File),
}

impl fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

/// Query parameters of a URL and the libpq variables they become.
const PARAMS: &[(&str, &str)] = &[
    ("host", "PGHOST"),
    ("port", "PGPORT"),
    ("user", "PGUSER"),
    ("dbname", "PGDATABASE"),
    ("sslmode", "PGSSLMODE"),
    ("sslrootcert", "PGSSLROOTCERT"),
    ("sslcert", "PGSSLCERT"),
    ("sslkey", "PGSSLKEY"),
    ("connect_timeout", "PGCONNECT_TIMEOUT"),
    ("application_name", "PGAPPNAME"),
    ("options", "PGOPTIONS"),
    ("target_session_attrs", "PGTARGETSESSIONATTRS"),
];

impl PgTarget {
    /// Parses `postgres://[user[:password]@][host][:port][/dbname][?param=value&...]`.
    pub fn parse(url: &str) -> Result<PgTarget> {
        let bad = |shown: &str, reason: &str| BackupError::Url {
            url: shown.to_string(),
            reason: reason.to_string(),
        };
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or_else(|| bad("(not shown)", "expected `postgres://` or `postgresql://`"))?;
        let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = main.split_once('/').unwrap_or((main, ""));
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            Some(u) => match u.split_once(':') {
                Some((u, p)) => (decode(u), Some(decode(p))),
                None => (decode(u), None),
            },
            None => (String::new(), None),
        };
        let mut env: Vec<(&'static str, String)> = Vec::new();
        let (host, port) = split_host_port(hostport);
        let database = decode(path);
        let shown = format!(
            "postgres://{}{}{hostport}/{database}",
            user,
            match (&password, user.is_empty()) {
                (Some(_), _) => ":***@",
                (None, false) => "@",
                (None, true) => "",
            }
        );
        if host.contains(',') {
            return Err(bad(&shown, "several hosts in one url are not supported"));
        }
        if !host.is_empty() {
            env.push(("PGHOST", decode(host)));
        }
        if let Some(p) = port {
            if p.parse::<u16>().is_err() {
                return Err(bad(&shown, "the port is not a number"));
            }
            env.push(("PGPORT", p.to_string()));
        }
        if !user.is_empty() {
            env.push(("PGUSER", user.clone()));
        }
        if !database.is_empty() {
            env.push(("PGDATABASE", database.clone()));
        }
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            if k == "password" {
                return Err(bad(
                    &shown,
                    "put the password before `@`, not in `?password=`",
                ));
            }
            let var = PARAMS
                .iter()
                .find(|(name, _)| *name == k)
                .map(|(_, var)| *var)
                .ok_or_else(|| bad(&shown, &format!("unknown parameter `{k}`")))?;
            env.retain(|(name, _)| *name != var);
            env.push((var, decode(v)));
        }
        let database = env
            .iter()
            .find(|(k, _)| *k == "PGDATABASE")
            .or_else(|| env.iter().find(|(k, _)| *k == "PGUSER"))
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| "postgres".into());
        if let Some(p) = &password {
            env.push(("PGPASSWORD", p.clone()));
        }
        Ok(PgTarget {
            env,
            password,
            database,
            shown,
            user: None,
        })
    }

    /// The URL with its password hidden: what errors and logs may show.
    pub fn redacted(&self) -> &str {
        &self.shown
    }

    pub fn database(&self) -> &str {
        &self.database
    }

    /// The same server and credentials, another database (a scratch one for verify).
    pub fn with_database(&self, database: &str) -> PgTarget {
        let mut t = self.clone();
        t.env.retain(|(k, _)| *k != "PGDATABASE");
        t.env.push(("PGDATABASE", database.to_string()));
        t.shown = match self.shown.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{database}"),
            None => self.shown.clone(),
        };
        t.database = database.to_string();
        t
    }

    /// The same target with its tools run as `user` (the app's): a dump is written
    /// through a descriptor the caller opened, a restore reads one, so the user needs no
    /// access to the backup files. A user that is this process's own changes nothing.
    pub fn as_user(mut self, user: Option<Credentials>) -> PgTarget {
        self.user = user.filter(|c| c.is_other_than_me());
        self
    }

    fn command(&self, tool: &str) -> Command {
        let exe = match std::env::var_os("HOIST_PG_BIN") {
            Some(dir) => PathBuf::from(dir).join(tool),
            None => PathBuf::from(tool),
        };
        let mut cmd = Command::new(exe);
        // Only what the URL says: a stray PGHOST or PGPASSWORD in the agent's own
        // environment must not redirect a restore.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("PG") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (*k, v.as_str())));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(user) = &self.user {
            user.drop_to(&mut cmd);
            // The agent's working directory may be out of the user's reach.
            cmd.current_dir("/");
        }
        cmd
    }

    /// Runs a tool to the end; its stdout on success, a redacted error otherwise.
    fn run(&self, tool: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let input = stdin.map_or(Input::Null, Input::Text);
        self.run_io(tool, args, input, None)
    }

    /// [`run`](Self::run) with stdin from `input` and stdout to `out` when given (the
    /// answer is then empty).
    fn run_io(
        &self,
        tool: &str,
        args: &[&str],
        input: Input<'_>,
        out: Option<std::fs::File>,
    ) -> Result<String> {
        let mut cmd = self.command(tool);
        cmd.args(args);
        let stdin = match input {
            Input::Null => None,
            Input::Text(t) => {
                cmd.stdin(Stdio::piped());
                Some(t)
            }
            Input::File(f) => {
                cmd.stdin(Stdio::from(f));
                None
            }
        };
        if let Some(f) = out {
            cmd.stdout(Stdio::from(f));
        }
        tracing::debug!(tool, target = %self.shown, "running a postgres tool");
        let mut child = cmd.spawn().map_err(|source| BackupError::Spawn {
            tool: tool.to_string(),
            source,
        })?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            let _ = pipe.write_all(input.as_bytes());
        }
        let out = child
            .wait_with_output()
            .map_err(|source| BackupError::Spawn {
                tool: tool.to_string(),
                source,
            })?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = err.lines().rev().take(5).collect();
            let detail = tail.into_iter().rev().collect::<Vec<_>>().join("; ");
            return Err(BackupError::Tool {
                tool: tool.to_string(),
                target: self.shown.clone(),
                detail: self.scrub(&format!("{} ({})", detail.trim(), out.status)),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Removes the password from a tool's message, in case a tool ever echoes it.
    fn scrub(&self, text: &str) -> String {
        match &self.password {
            Some(p) if p.len() >= 3 => text.replace(p.as_str(), "***"),
            _ => text.to_string(),
        }
    }
}

fn split_host_port(hostport: &str) -> (&str, Option<&str>) {
    if let Some(rest) = hostport.strip_prefix('[') {
        // [ipv6]:port
        if let Some((h, after)) = rest.split_once(']') {
            return (h, after.strip_prefix(':'));
        }
    }
    match hostport.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (hostport, None),
    }
}

/// Percent-decoding for the parts of a URL.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Dumps the database to `dest` in pg_dump's custom format, sealed.
pub fn backup(target: &PgTarget, dest: &Path) -> Result<Sealed> {
    let partial = file::partial_path(dest);
    // pg_dump writes to its stdout, the file opened here: whoever it runs as needs no
    // right to the backups' directory (a regular file, so the archive keeps its offsets).
    let out = file::create_private(&partial)?;
    let res = target.run_io(
        "pg_dump",
        &["--format=custom", "--no-password"],
        Input::Null,
        Some(out),
    );
    if let Err(e) = res {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    file::seal(&partial, dest)
}

/// Restores the dump into the target's database (objects in the dump are dropped and
/// recreated, in one transaction), then counts the rows of every table.
pub fn restore(target: &PgTarget, dump: &Path) -> Result<Checked> {
    let db = format!("--dbname={}", target.database());
    // Read from stdin, opened here (a regular file: pg_restore can still seek in it).
    let file = std::fs::File::open(dump).map_err(BackupError::io(dump))?;
    target.run_io(
        "pg_restore",
        &[
            "--clean",
            "--if-exists",
            "--no-owner",
            "--single-transaction",
            "--exit-on-error",
            "--no-password",
            &db,
        ],
        Input::File(file),
        None,
    )?;
    counts(target)
}

/// Restores the dump into a new scratch database on the same server, counts its rows
/// and drops it again (also when the restore failed).
pub fn verify(target: &PgTarget, dump: &Path, scratch_name: &str) -> Result<Checked> {
    let quoted = format!("\"{}\"", scratch_name.replace('"', "\"\""));
    let db = format!("--dbname={}", target.database());
    // One statement on the target's own database (CREATE/DROP DATABASE cannot run in
    // the database they name).
    let admin = |sql: String| {
        target.run(
            "psql",
            &["-X", "-q", "--no-password", &db, "-c", &sql],
            None,
        )
    };
    admin(format!("CREATE DATABASE {quoted}"))?;
    let scratch = target.with_database(scratch_name);
    let result = restore(&scratch, dump);
    if let Err(e) = admin(format!("DROP DATABASE IF EXISTS {quoted}")) {
        tracing::warn!(error = %e, database = scratch_name, "cannot drop the scratch database");
    }
    result
}

/// Rows in every user table, counted in one `psql` session.
pub fn counts(target: &PgTarget) -> Result<Checked> {
    const SCRIPT: &str = "SELECT format('SELECT %L, count(*) FROM %I.%I', \
        schemaname || '.' || tablename, schemaname, tablename) \
        FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema') \
        ORDER BY 1\n\\gexec\n";
    let db = format!("--dbname={}", target.database());
    let out = target.run(
        "psql",
        &[
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "--no-password",
            "--field-separator=\t",
            &db,
            "-f",
            "-",
        ],
        Some(SCRIPT),
    )?;
    let mut tables = BTreeMap::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let (name, n) = line.rsplit_once('\t').ok_or_else(|| BackupError::Tool {
            tool: "psql".into(),
            target: target.shown.clone(),
            detail: format!("unexpected output line `{line}`"),
        })?;
        let n: u64 = n.trim().parse().map_err(|_| BackupError::Tool {
            tool: "psql".into(),
            target: target.shown.clone(),
            detail: format!("unexpected count in `{line}`"),
        })?;
        tables.insert(name.to_string(), n);
    }
    let rows: u64 = tables.values().sum();
    Ok(Checked {
        summary: format!("pg_restore ok, {} tables, {rows} rows", tables.len()),
        tables,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(t: &PgTarget) -> BTreeMap<&str, &str> {
        t.env.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    #[test]
    fn urls_become_environment_and_are_shown_redacted() {
        let t =
            PgTarget::parse("postgres://app:s3cr%40t@db.local:6432/notes?sslmode=require").unwrap();
        assert_eq!(t.redacted(), "postgres://app:***@db.local:6432/notes");
        assert_eq!(format!("{t:?}"), "postgres://app:***@db.local:6432/notes");
        let e = env(&t);
        assert_eq!(e["PGHOST"], "db.local");
        assert_eq!(e["PGPORT"], "6432");
        assert_eq!(e["PGUSER"], "app");
        assert_eq!(e["PGPASSWORD"], "s3cr@t");
        assert_eq!(e["PGDATABASE"], "notes");
        assert_eq!(e["PGSSLMODE"], "require");
        let s = t.with_database("scratch");
        assert_eq!(s.redacted(), "postgres://app:***@db.local:6432/scratch");
        assert_eq!(env(&s)["PGDATABASE"], "scratch");

        let t = PgTarget::parse("postgresql://u@[::1]:5433/d").unwrap();
        assert_eq!(env(&t)["PGHOST"], "::1");
        assert_eq!(env(&t)["PGPORT"], "5433");
        assert!(!env(&t).contains_key("PGPASSWORD"));
        let t = PgTarget::parse("postgres:///d?host=%2Frun%2Fpg").unwrap();
        assert_eq!(env(&t)["PGHOST"], "/run/pg");
        assert_eq!(t.database(), "d");
    }

    #[test]
    fn bad_urls_are_refused_without_their_password() {
        for url in [
            "mysql://u:hunter22@h/d",
            "postgres://u:hunter22@h:x/d",
            "postgres://u:hunter22@h/d?password=hunter22",
            "postgres://u:hunter22@h/d?bogus=1",
            "postgres://u:hunter22@a,b/d",
        ] {
            let e = PgTarget::parse(url).unwrap_err().to_string();
            assert!(!e.contains("hunter22"), "{e}");
        }
    }

    #[test]
    fn tool_errors_are_redacted() {
        let t = PgTarget::parse("postgres://u:hunter22@127.0.0.1:1/d").unwrap();
        let e = t
            .run(
                "sh",
                &["-c", "echo \"bad password hunter22\" >&2; exit 3"],
                None,
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("***") && !e.contains("hunter22"), "{e}");
    }
}
