//! The CLI's side of the agent API: one HTTP/1.1 connection per request over the agent's
//! Unix socket. Errors say whether the agent is absent, refused, or answered an error.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;

use hoist_protocol::agent::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no agent answers on `{socket}`")]
    NotRunning {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("permission denied on the agent's socket `{socket}`")]
    Forbidden { socket: PathBuf },
    #[error("{}", .0.error)]
    Api(ApiError, StatusCode),
    #[error("the agent's answer could not be read: {0}")]
    Protocol(String),
    #[error("cannot read `{path}`")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl ClientError {
    pub fn hint(&self) -> Option<&str> {
        match self {
            ClientError::NotRunning { .. } => {
                Some("start one with `hoist agent`, or set HOIST_SOCKET to the socket of a running agent")
            }
            ClientError::Forbidden { .. } => Some("the agent belongs to another user: run this as that user"),
            ClientError::Api(e, _) => e.hint.as_deref(),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

type ReqBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

impl Client {
    pub fn new(socket: &Path) -> Client {
        Client {
            socket: socket.to_path_buf(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: ReqBody,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| {
                if source.kind() == std::io::ErrorKind::PermissionDenied {
                    ClientError::Forbidden {
                        socket: self.socket.clone(),
                    }
                } else {
                    ClientError::NotRunning {
                        socket: self.socket.clone(),
                        source,
                    }
                }
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::builder()
            .method(method)
            .uri(format!("http://agent{path}"))
            .header("host", "agent")
            .header("content-type", "application/json")
            .body(body)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let err =
            serde_json::from_slice::<ApiError>(&bytes.to_bytes()).unwrap_or_else(|_| ApiError {
                error: format!("the agent answered {status}"),
                hint: None,
            });
        Err(ClientError::Api(err, status))
    }

    fn json_body<B: Serialize>(body: &B) -> ReqBody {
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        Full::new(Bytes::from(bytes))
            .map_err(|never| match never {})
            .boxed()
    }

    fn empty() -> ReqBody {
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed()
    }

    /// A request with an optional JSON body and a JSON answer.
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let body = body.map_or_else(Self::empty, Self::json_body);
        read_json(self.send(method, path, body).await?).await
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call::<(), T>(Method::GET, path, None).await
    }

    /// A request whose answer is a JSON-lines stream; `on_item` sees each object as it
    /// arrives and returns false to stop reading.
    pub async fn stream<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        mut on_item: impl FnMut(T) -> bool,
    ) -> Result<(), ClientError> {
        let body = body.map_or_else(Self::empty, Self::json_body);
        let mut resp = self.send(method, path, body).await?.into_body();
        let mut buf: Vec<u8> = Vec::new();
        while let Some(frame) = resp.frame().await {
            let frame = frame.map_err(|e| ClientError::Protocol(e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                if line.len() <= 1 {
                    continue;
                }
                let item = serde_json::from_slice(&line)
                    .map_err(|e| ClientError::Protocol(e.to_string()))?;
                if !on_item(item) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Streams a file as the request body (an artifact upload) and reads a JSON answer.
    pub async fn upload<T: DeserializeOwned>(
        &self,
        path: &str,
        file: &Path,
    ) -> Result<T, ClientError> {
        let f = tokio::fs::File::open(file)
            .await
            .map_err(|source| ClientError::Read {
                path: file.to_path_buf(),
                source,
            })?;
        let stream = tokio_util_like::chunks(f);
        let body = http_body_util::StreamBody::new(stream).boxed();
        read_json(self.send(Method::POST, path, body).await?).await
    }
}

/// A whole JSON answer.
async fn read_json<T: DeserializeOwned>(
    resp: hyper::Response<hyper::body::Incoming>,
) -> Result<T, ClientError> {
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    serde_json::from_slice(&bytes.to_bytes()).map_err(|e| ClientError::Protocol(e.to_string()))
}

/// A file read as a stream of body frames, 256 KiB at a time.
mod tokio_util_like {
    use bytes::Bytes;
    use hyper::body::Frame;
    use tokio::io::AsyncReadExt;

    pub fn chunks(
        file: tokio::fs::File,
    ) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, std::io::Error>> + Send + Sync + 'static
    {
        futures_util::stream::unfold(Some(file), |state| async move {
            let mut file = state?;
            let mut buf = vec![0u8; 256 * 1024];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(Frame::data(Bytes::from(buf))), Some(file)))
                }
                Err(e) => Some((Err(e), None)),
            }
        })
    }
}
