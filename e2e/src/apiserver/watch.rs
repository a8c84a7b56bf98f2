//! Watch responses: a stream of JSON lines (`{"type": ..., "object": ...}`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::error::ApiError;
use super::registry::ResourceInfo;
use super::selectors::Selector;
use super::store::{Event, Store};
use super::table;

pub struct WatchRequest {
    pub res: ResourceInfo,
    pub version: String,
    pub ns: Option<String>,
    pub selector: Selector,
    pub from: Option<u64>,
    pub bookmarks: bool,
    pub send_initial_events: bool,
    pub timeout: Duration,
    pub bookmark_interval: Duration,
    /// Events carry one-row Tables (kubectl get -w) instead of objects.
    pub table: Option<table::Include>,
}

fn line(v: &Value) -> Bytes {
    let mut s = v.to_string();
    s.push('\n');
    Bytes::from(s)
}

impl WatchRequest {
    fn present(&self, obj: &Value) -> Value {
        let mut o = obj.clone();
        o["apiVersion"] = json!(self.res.api_version(&self.version));
        o["kind"] = json!(self.res.kind);
        if super::convert::is_events_api(&self.res) {
            super::convert::event_from_core(&mut o);
        }
        o
    }

    /// The event this watcher sees, if any: an object entering or leaving the selector
    /// shows as ADDED or DELETED.
    fn render(&self, ev: &Event) -> Option<Bytes> {
        if ev.key != self.res.key() || self.ns.as_ref().is_some_and(|ns| *ns != ev.ns) {
            return None;
        }
        let now = self.selector.matches(&ev.object);
        let before = ev.old.as_ref().is_some_and(|o| self.selector.matches(o));
        let etype = match (ev.etype, now, before) {
            ("MODIFIED", true, true) => "MODIFIED",
            ("MODIFIED", true, false) => "ADDED",
            ("MODIFIED", false, true) => "DELETED",
            ("MODIFIED", false, false) => return None,
            (t, true, _) => t,
            _ => return None,
        };
        let object = self.present(&ev.object);
        let object = match self.table {
            Some(include) => {
                let meta = json!({"resourceVersion": ev.rv.to_string()});
                table::table(&self.res, &self.version, &[object], include, meta, true)
            }
            None => object,
        };
        Some(line(&json!({"type": etype, "object": object})))
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        line(
            &json!({"type": "BOOKMARK", "object": {"kind": self.res.kind, "apiVersion": self.res.api_version(&self.version), "metadata": meta}}),
        )
    }
}

pub fn respond(store: &Store, req: WatchRequest) -> Response {
    let from = if req.send_initial_events {
        None
    } else {
        req.from
    };
    let (tx, mut rx) = mpsc::channel::<Bytes>(256);
    match store.watch(&req.res, from) {
        Err(e) => {
            // A real server answers 200 and sends the 410 as an ERROR event.
            let _ = tx.try_send(line(&json!({"type": "ERROR", "object": e.to_status()})));
        }
        Ok((backlog, sub, start_rv)) => {
            tokio::spawn(run(req, backlog, sub, start_rv, tx));
        }
    }
    let stream =
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|o| o.map(Ok::<_, Infallible>)));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

async fn run(
    req: WatchRequest,
    backlog: Vec<Arc<Event>>,
    mut sub: broadcast::Receiver<Arc<Event>>,
    start_rv: u64,
    tx: mpsc::Sender<Bytes>,
) {
    let mut last_rv = start_rv;
    for ev in &backlog {
        if let Some(b) = req.render(ev)
            && tx.send(b).await.is_err()
        {
            return;
        }
    }
    if req.send_initial_events
        && req.bookmarks
        && tx.send(req.bookmark(last_rv, true)).await.is_err()
    {
        return;
    }
    let deadline = tokio::time::sleep(req.timeout);
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(req.bookmark_interval);
    tick.reset();
    loop {
        tokio::select! {
            _ = &mut deadline => return,
            _ = tx.closed() => return,
            r = sub.recv() => match r {
                Ok(ev) => {
                    if ev.rv <= start_rv {
                        continue;
                    }
                    last_rv = ev.rv;
                    if let Some(b) = req.render(&ev)
                        && tx.send(b).await.is_err() {
                            return;
                        }
                }
                // Lagging or closed: end the watch; clients re-watch from their last version.
                Err(_) => return,
            },
            _ = tick.tick(), if req.bookmarks => {
                if tx.send(req.bookmark(last_rv, false)).await.is_err() {
                    return;
                }
            }
        }
    }
}

pub fn parse_from(rv: Option<&str>) -> Result<Option<u64>, ApiError> {
    match rv {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("invalid resource version: {s}"))),
    }
}
