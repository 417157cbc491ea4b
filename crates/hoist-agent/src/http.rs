//! HTTP/1.1 over a Unix socket, both ends: the agent's listener (mode 0600, peers checked
//! with SO_PEERCRED) and the client the CLI uses. JSON bodies; streams are one JSON
//! object per line, sent as they happen.

use std::convert::Infallible;
use std::path::Path;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Response, StatusCode};
use serde::Serialize;
use tokio::sync::mpsc;

pub type Body = BoxBody<Bytes, Infallible>;

/// A JSON answer.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let bytes = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)).boxed())
        .expect("static response parts are valid")
}

/// An error answer in the API's error shape.
pub fn error(status: StatusCode, message: impl Into<String>, hint: Option<&str>) -> Response<Body> {
    json(
        status,
        &hoist_protocol::agent::ApiError {
            error: message.into(),
            hint: hint.map(str::to_string),
        },
    )
}

/// A streaming answer fed by the returned sender, one JSON object per line. Dropping the
/// sender ends the stream.
pub fn stream() -> (LineSender, Response<Body>) {
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let body = StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    }));
    let resp = Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/x-ndjson")
        .body(BodyExt::boxed(body))
        .expect("static response parts are valid");
    (LineSender { tx }, resp)
}

/// The sending half of a JSON-lines stream.
#[derive(Clone)]
pub struct LineSender {
    tx: mpsc::Sender<Bytes>,
}

impl LineSender {
    /// Sends one object; false once the reader has gone away.
    pub async fn send<T: Serialize>(&self, value: &T) -> bool {
        let mut line = serde_json::to_vec(value).unwrap_or_default();
        line.push(b'\n');
        self.tx.send(Bytes::from(line)).await.is_ok()
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Reads a whole request body, refusing more than `limit` bytes.
pub async fn read_body(body: hyper::body::Incoming, limit: usize) -> Result<Bytes, String> {
    let limited = http_body_util::Limited::new(body, limit);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => Err(format!("cannot read the request body: {e}")),
    }
}

/// The uid of the process at the other end of a Unix socket.
pub fn peer_uid(stream: &tokio::net::UnixStream) -> Option<u32> {
    stream.peer_cred().ok().map(|c| c.uid())
}

/// Binds the agent's socket with mode 0600, replacing a stale socket file.
pub fn bind_socket(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        // Only a socket a dead agent left behind is replaced: never a regular file, a
        // directory or a link someone put there.
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "`{}` exists and is not a socket; refusing to replace it",
                    path.display()
                ),
            ));
        }
        // A live agent answers on it; a dead one left a file that refuses connections.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("another agent already answers on `{}`", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Bind under a restrictive umask so there is no window where the socket is open to all.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let listener = tokio::net::UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = listener?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Streams a request body into a new, uniquely named file in `dir` (an upload that must be
/// read back whole), returning its path (removed when dropped) and the bytes written. The
/// name is never shared: two uploads at once each get their own file. On any failure the
/// file is removed and the answer to send is returned; `what` names the body in messages
/// ("the upload").
pub async fn spool(
    mut body: hyper::body::Incoming,
    dir: &Path,
    prefix: &str,
    what: &str,
) -> Result<(tempfile::TempPath, u64), Box<Response<Body>>> {
    use tokio::io::AsyncWriteExt;
    let created = tempfile::Builder::new()
        .prefix(prefix)
        .tempfile_in(dir)
        .map(|t| t.into_parts());
    let (file, path) = match created {
        Ok(parts) => parts,
        Err(e) => {
            let msg = format!("cannot store {what} in `{}`: {e}", dir.display());
            return Err(Box::new(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                msg,
                None,
            )));
        }
    };
    let mut file = tokio::fs::File::from_std(file);
    // Dropping `path` removes the file.
    let fail = |status: StatusCode, message: String| Box::new(error(status, message, None));
    let mut written: u64 = 0;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                format!("{what} was cut short"),
            ));
        };
        if let Ok(data) = frame.into_data() {
            written += data.len() as u64;
            if let Err(e) = file.write_all(&data).await {
                let msg = format!("cannot store {what}: {e}");
                return Err(fail(StatusCode::INSUFFICIENT_STORAGE, msg));
            }
        }
    }
    // tokio writes in the background: without a flush the last chunk may not be in the
    // file yet when it is read back.
    if let Err(e) = file.flush().await {
        let msg = format!("cannot store {what}: {e}");
        return Err(fail(StatusCode::INSUFFICIENT_STORAGE, msg));
    }
    Ok((path, written))
}
