//! The proxy's last route table on disk, so that a proxy restarted while the agent is
//! down still serves. Written atomically (temp file, fsync, rename, fsync of the
//! directory): a crash leaves the old table or the new one, never half of either.

use std::io::Write;
use std::path::Path;

use hoist_protocol::proxy as wire;

use crate::error::ProxyError;

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    routes: Vec<wire::Route>,
}

/// Writes `routes` to `path`, replacing it atomically.
pub(crate) fn save(path: &Path, routes: &[wire::Route]) -> Result<(), ProxyError> {
    let err = |error| ProxyError::StateWrite {
        path: path.to_path_buf(),
        error,
    };
    let data = serde_json::to_vec_pretty(&StateFile {
        version: wire::VERSION,
        routes: routes.to_vec(),
    })
    .map_err(|e| err(std::io::Error::other(e)))?;
    write_private(path, &data).map_err(err)
}

/// Writes `data` to `path` readable by the owner only, never torn: a temp file beside
/// it, fsync, rename, fsync of the directory (route tables carry guards' password hashes,
/// and the certificate file private keys).
pub(crate) fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".into());
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Reads the table saved at `path`; `None` when there is no file yet.
pub(crate) fn load(path: &Path) -> Result<Option<Vec<wire::Route>>, ProxyError> {
    let bad = |message: String| ProxyError::StateRead {
        path: path.to_path_buf(),
        message,
    };
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(bad(e.to_string())),
    };
    let file: StateFile = serde_json::from_slice(&data).map_err(|e| bad(e.to_string()))?;
    if file.version != wire::VERSION {
        return Err(bad(format!(
            "version `{}` is not supported (expected `{}`)",
            file.version,
            wire::VERSION
        )));
    }
    Ok(Some(file.routes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_tables_load_back_and_garbage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.json");
        assert!(load(&path).unwrap().is_none());
        let route = wire::Route {
            id: "a/web".into(),
            app: "a".into(),
            service: "web".into(),
            domains: vec!["*".into()],
            path_prefix: "/".into(),
            release: "r1".into(),
            upstreams: vec![wire::Upstream {
                addr: "127.0.0.1:1".parse().unwrap(),
                instance: "i".into(),
            }],
            drain_timeout_ms: 10,
            guards: Default::default(),
            tls: None,
            canary: None,
        };
        save(&path, std::slice::from_ref(&route)).unwrap();
        assert_eq!(load(&path).unwrap().unwrap(), vec![route]);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
        std::fs::write(&path, b"{ not json").unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("proxy.json"), "{err}");
    }
}
