//! The proxy's errors: each variant names what failed (the socket, the file, the
//! request) so that the agent and the CLI can tell an operator what to fix.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on `{addr}`: {error}")]
    Listen {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("cannot use the control socket `{path}`: {error}")]
    Control {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot read the proxy state `{path}`: {message}")]
    StateRead { path: PathBuf, message: String },
    #[error("cannot write the proxy state `{path}`: {error}")]
    StateWrite {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot open the access log `{path}`: {error}")]
    AccessLog {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot start the proxy runtime: {0}")]
    Runtime(std::io::Error),
    #[error("inherited sockets are malformed (`{value}`): {message}")]
    Inherit { value: String, message: String },
    #[error("the upgrade failed: {0}")]
    Upgrade(String),
    #[error("invalid route `{id}`: {message}")]
    InvalidRoute { id: String, message: String },
    #[error("no route `{0}`")]
    NoSuchRoute(String),
    #[error("the control socket `{path}` answered badly: {message}")]
    Protocol { path: PathBuf, message: String },
    #[error("the proxy refused the request: {0}")]
    Refused(String),
}
