//! The kubelet's log endpoint, which `kubectl logs` (pods/log) reaches through the API
//! server: `GET /containerLogs/{namespace}/{pod}/{container}` over HTTPS, on the port the
//! Node advertises in `status.daemonEndpoints.kubeletEndpoint.Port`. As on a real kubelet
//! the API server's proxy is the client: no authentication of its own here (a real API
//! server does not verify a kubelet's serving certificate unless told to).
//!
//! What it serves: the container's log file (`<root>/<ns>/<pod>/logs/<container>.log`,
//! written by the process runtime) with `tailLines`, `limitBytes` and `follow`. The files
//! have no per-line timestamps, so `sinceSeconds`, `sinceTime` and `timestamps` are refused
//! with 400 rather than answered wrongly; restarts append to the same file, so there is no
//! `previous` log (400, as a real kubelet answers a container that never restarted).

use std::collections::HashMap;
use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::apiserver::tls::{Pki, TlsListener};

/// How often a followed log is checked for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// A running log endpoint; stops when dropped.
pub struct LogServer {
    pub port: u16,
    task: JoinHandle<()>,
}

impl Drop for LogServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves the logs under `root` on `ip`, on a port of its own.
pub async fn start(root: PathBuf, ip: std::net::IpAddr) -> std::io::Result<LogServer> {
    let listener = TcpListener::bind((ip, 0)).await?;
    let port = listener.local_addr()?.port();
    let pki = Pki::generate(&[ip.to_string()]).map_err(std::io::Error::other)?;
    let tls = TlsListener::new(listener, &pki).map_err(std::io::Error::other)?;
    let app = axum::Router::new()
        .route(
            "/containerLogs/{ns}/{pod}/{container}",
            axum::routing::get(container_logs),
        )
        .with_state(Arc::new(root));
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(tls, app).await {
            tracing::error!(error = %e, "kubelet log endpoint stopped");
        }
    });
    Ok(LogServer { port, task })
}

fn bad(msg: String) -> Response {
    (StatusCode::BAD_REQUEST, msg).into_response()
}

/// Where a log read starts: the byte offset of the last `tail` lines of `text`.
pub fn tail_offset(text: &[u8], tail: Option<usize>) -> usize {
    let Some(n) = tail else { return 0 };
    if n == 0 {
        return text.len();
    }
    // A final line without its newline counts as a line.
    let end = if text.ends_with(b"\n") {
        text.len().saturating_sub(1)
    } else {
        text.len()
    };
    let mut seen = 0;
    for (i, b) in text[..end].iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return i + 1;
            }
        }
    }
    0
}

async fn container_logs(
    State(root): State<Arc<PathBuf>>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    for unsupported in ["sinceSeconds", "sinceTime", "timestamps"] {
        if q.get(unsupported).is_some_and(|v| v != "false") {
            return bad(format!(
                "{unsupported} is not supported by the quiver process kubelet: its log files carry no timestamps"
            ));
        }
    }
    if q.get("previous").is_some_and(|v| v == "true") {
        return bad(format!(
            "previous terminated container \"{container}\" in pod \"{pod}\" not found"
        ));
    }
    let number = |key: &str| -> Result<Option<usize>, String> {
        match q.get(key) {
            None => Ok(None),
            Some(v) => match v.parse::<i64>() {
                Ok(n) if n >= 0 => Ok(Some(n as usize)),
                Ok(_) if key == "tailLines" => Ok(None),
                _ => Err(format!("{key}: {v:?} is not a non-negative integer")),
            },
        }
    };
    let (tail, limit) = match (number("tailLines"), number("limitBytes")) {
        (Ok(t), Ok(l)) => (t, l),
        (Err(e), _) | (_, Err(e)) => return bad(e),
    };
    let follow = q.get("follow").is_some_and(|v| v == "true");
    for part in [&ns, &pod, &container] {
        if part.is_empty() || part.contains('/') || part.starts_with('.') {
            return bad(format!("invalid name {part:?}"));
        }
    }
    let pod_dir = root.join(&ns).join(&pod);
    let path = pod_dir.join("logs").join(format!("{container}.log"));
    let text = match tokio::fs::read(&path).await {
        Ok(t) => t,
        Err(_) => {
            return (
                StatusCode::NOT_FOUND,
                format!("container \"{container}\" in pod \"{pod}\" has no log (not started yet)"),
            )
                .into_response();
        }
    };
    let start = tail_offset(&text, tail);
    let plain = [(header::CONTENT_TYPE, "text/plain")];
    if !follow {
        let mut body = text[start..].to_vec();
        if let Some(l) = limit {
            body.truncate(l);
        }
        return (plain, body).into_response();
    }
    let stream = follow_stream(path, pod_dir, start as u64, limit);
    (plain, Body::from_stream(stream)).into_response()
}

/// The log from `offset` on, then whatever is appended, until the pod's directory goes (the
/// pod was deleted), `limit` bytes were sent, or the client hangs up (the stream is dropped).
fn follow_stream(
    path: PathBuf,
    pod_dir: PathBuf,
    offset: u64,
    limit: Option<usize>,
) -> impl futures::Stream<Item = std::io::Result<Vec<u8>>> {
    struct St {
        path: PathBuf,
        pod_dir: PathBuf,
        offset: u64,
        left: Option<usize>,
    }
    futures::stream::unfold(
        St {
            path,
            pod_dir,
            offset,
            left: limit,
        },
        |mut st| async move {
            loop {
                if st.left == Some(0) {
                    return None;
                }
                match read_from(&st.path, st.offset).await {
                    Ok(mut chunk) if !chunk.is_empty() => {
                        if let Some(left) = st.left {
                            chunk.truncate(left);
                            st.left = Some(left - chunk.len());
                        }
                        st.offset += chunk.len() as u64;
                        return Some((Ok(chunk), st));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        return Some((
                            Err(e),
                            St {
                                left: Some(0),
                                ..st
                            },
                        ));
                    }
                }
                if !st.pod_dir.is_dir() {
                    return None;
                }
                tokio::time::sleep(FOLLOW_POLL).await;
            }
        },
    )
}

async fn read_from(path: &Path, offset: u64) -> std::io::Result<Vec<u8>> {
    let mut f = tokio::fs::File::open(path).await?;
    let len = f.metadata().await?.len();
    // A log that shrank (rotated or truncated) is read again from its start.
    let from = if len < offset { 0 } else { offset };
    f.seek(SeekFrom::Start(from)).await?;
    let mut buf = Vec::new();
    f.take(1 << 20).read_to_end(&mut buf).await?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_counts_lines_from_the_end() {
        let t = b"a\nb\nc\n";
        assert_eq!(&t[tail_offset(t, Some(2))..], b"b\nc\n");
        assert_eq!(&t[tail_offset(t, Some(5))..], b"a\nb\nc\n");
        assert_eq!(&t[tail_offset(t, Some(0))..], b"");
        assert_eq!(&t[tail_offset(t, None)..], b"a\nb\nc\n");
        // An unfinished last line is a line.
        let u = b"a\nb\nc";
        assert_eq!(&u[tail_offset(u, Some(1))..], b"c");
        assert_eq!(tail_offset(b"", Some(3)), 0);
    }
}
