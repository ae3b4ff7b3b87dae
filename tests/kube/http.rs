//! The stand-in's HTTP side: discovery, OpenAPI v3 (enough for kubectl's field
//! validation check), CRUD with the status subresource, and chunked watches with
//! bookmarks and `410 Gone`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use super::crd::{custom_kind, find_kind};
use super::discovery::discovery;
use super::json::{field_selector_matches, label_selector_matches, table};
use super::store::{ApiError, Change, Feed, Resource, Store};

/// State shared by every request.
pub struct Shared {
    /// The objects.
    pub store: Mutex<Store>,
    /// While set, open watches forward nothing (the "watch is down" of a test).
    pub paused: AtomicBool,
    /// How often a watch that asked for bookmarks gets one.
    pub bookmark_every: Duration,
    /// Every request as `METHOD path?query user-agent`, for tests that check what a client did.
    pub requests: Mutex<Vec<String>>,
}

/// How a request on one object wants its answer and its checks.
#[derive(Clone, Copy)]
struct Request {
    /// `Accept: …;as=Table`.
    as_table: bool,
    /// `fieldValidation=Strict`: unknown fields are an error.
    strict: bool,
}

/// What one request asks for, parsed from its path.
struct Target {
    resource: Resource,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn parse_target(path: &str, store: &Store) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, tail): (&str, &str, &[&str]) = match parts.as_slice() {
        ["api", "v1", tail @ ..] => ("", "v1", tail),
        ["apis", group, version, tail @ ..] => (group, version, tail),
        _ => return None,
    };
    let (ns, rest): (Option<String>, &[&str]) = match tail {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        rest => (None, rest),
    };
    let (resource, name, status) = match rest {
        [r] => (r, None, false),
        [r, n] => (r, Some(n.to_string()), false),
        [r, n, "status"] => (r, Some(n.to_string()), true),
        _ => return None,
    };
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    let resource = Resource::from_plural(resource)
        .filter(|r| r.api_version() == gv)
        .or_else(|| served_custom(store, group, version, resource))?;
    if ns.is_some() && !resource.namespaced() {
        return None;
    }
    Some(Target {
        resource,
        namespace: ns,
        name,
        status,
    })
}

/// The custom kind `group`/`version`/`plural`, while a CRD in this store defines it.
fn served_custom(store: &Store, group: &str, version: &str, plural: &str) -> Option<Resource> {
    let i = find_kind(group, plural)?;
    let crd = format!("{plural}.{group}");
    store.get(Resource::Crds, "", &crd).ok()?;
    (custom_kind(i).version == version).then_some(Resource::Custom(i))
}

/// The namespace a request works in: its own, `default`, or none for a cluster-scoped kind.
fn namespace_of(target: &Target) -> &str {
    match (&target.namespace, target.resource.namespaced()) {
        (_, false) => "",
        (Some(ns), true) => ns,
        (None, true) => "default",
    }
}

fn query(uri: &Uri) -> HashMap<String, String> {
    let raw = uri.query().unwrap_or("");
    url_pairs(raw).collect()
}

fn url_pairs(raw: &str) -> impl Iterator<Item = (String, String)> + '_ {
    raw.split('&').filter(|p| !p.is_empty()).map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        (percent_decode(k), percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn respond(code: u16, body: &Value) -> Response {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("response")
}

fn error(e: &ApiError) -> Response {
    respond(e.code, &e.status())
}

/// Every request goes through here.
pub async fn handle(
    shared: Arc<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let agent = headers
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    let line = format!(
        "{method} {} {agent}",
        uri.path_and_query().map_or("", |p| p.as_str())
    );
    shared.requests.lock().expect("requests").push(line);
    let (doc, target) = {
        let store = shared.store.lock().expect("store");
        (
            discovery(uri.path(), &store),
            parse_target(uri.path(), &store),
        )
    };
    if let Some(doc) = doc {
        return respond(200, &doc);
    }
    let Some(target) = target else {
        return error(&ApiError {
            code: 404,
            reason: "NotFound",
            message: format!(
                "the server could not find the requested resource ({})",
                uri.path()
            ),
        });
    };
    let q = query(&uri);
    let accept = headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let as_table = accept.contains("as=Table");
    let strict = q.get("fieldValidation").is_some_and(|v| v == "Strict");
    match (&method, &target.name) {
        (&Method::GET, None) if q.get("watch").is_some_and(|w| w == "true" || w == "1") => {
            watch(shared, target, q, as_table)
        }
        (&Method::GET, None) => list(&shared, &target, &q, as_table),
        (&Method::POST, None) => write(
            &shared,
            &target,
            &body,
            |store, ns, obj| store.create(target.resource, ns, obj, strict),
            201,
        ),
        (_, Some(name)) => {
            let name = name.clone();
            let how = Request { as_table, strict };
            one(&shared, &method, &target, &name, &headers, &body, how)
        }
        _ => error(&ApiError {
            code: 405,
            reason: "MethodNotAllowed",
            message: format!("{method} is not supported here"),
        }),
    }
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not JSON: {e}")))
}

fn write(
    shared: &Shared,
    target: &Target,
    body: &Bytes,
    op: impl FnOnce(&mut Store, &str, Value) -> Result<Value, ApiError>,
    code: u16,
) -> Response {
    let ns = namespace_of(target);
    let result =
        parse_body(body).and_then(|obj| op(&mut shared.store.lock().expect("store"), ns, obj));
    match result {
        Ok(obj) => respond(code, &obj),
        Err(e) => error(&e),
    }
}

fn one(
    shared: &Shared,
    method: &Method,
    target: &Target,
    name: &str,
    headers: &HeaderMap,
    body: &Bytes,
    how: Request,
) -> Response {
    let Request { as_table, strict } = how;
    let ns = namespace_of(target);
    let r = target.resource;
    let mut store = shared.store.lock().expect("store");
    let result = match *method {
        Method::GET => store.get(r, ns, name),
        Method::DELETE => store.delete(r, ns, name),
        Method::PUT => {
            parse_body(body).and_then(|o| store.replace(r, ns, name, o, target.status, strict))
        }
        Method::PATCH => {
            let ct = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            parse_body(body).and_then(|p| store.patch(r, ns, name, ct, &p, target.status, strict))
        }
        _ => Err(ApiError {
            code: 405,
            reason: "MethodNotAllowed",
            message: format!("{method} is not supported"),
        }),
    };
    match result {
        Ok(obj) if as_table && *method == Method::GET => {
            respond(200, &table(r, &[obj], store.rv(), false))
        }
        Ok(obj) => respond(200, &obj),
        Err(e) => error(&e),
    }
}

fn selected(obj: &Value, q: &HashMap<String, String>) -> bool {
    q.get("fieldSelector")
        .is_none_or(|s| field_selector_matches(obj, s))
        && q.get("labelSelector")
            .is_none_or(|s| label_selector_matches(obj, s))
}

fn list(shared: &Shared, target: &Target, q: &HashMap<String, String>, as_table: bool) -> Response {
    let store = shared.store.lock().expect("store");
    let items: Vec<Value> = store
        .list(target.resource, target.namespace.as_deref())
        .into_iter()
        .filter(|o| selected(o, q))
        .collect();
    let rv = store.rv();
    if as_table {
        let full = q.get("includeObject").is_some_and(|i| i == "Object");
        return respond(200, &table(target.resource, &items, rv, full));
    }
    respond(
        200,
        &json!({
            "kind": target.resource.list_kind(), "apiVersion": target.resource.api_version(),
            "metadata": {"resourceVersion": rv.to_string()},
            "items": items,
        }),
    )
}

/// A watch: replay from `resourceVersion` (or synthetic ADDED for every object when
/// it is absent or 0), then live changes, bookmarks when asked, until the client
/// leaves, `timeoutSeconds` passes or history is compacted (then `410 Gone`).
fn watch(
    shared: Arc<Shared>,
    target: Target,
    q: HashMap<String, String>,
    as_table: bool,
) -> Response {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(1024);
    let from: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (feed, backlog, start) = {
        let store = shared.store.lock().expect("store");
        let feed = store.subscribe();
        let backlog = if from == 0 {
            Ok(store
                .list(target.resource, target.namespace.as_deref())
                .into_iter()
                .map(|object| Change {
                    rv: store.rv(),
                    resource: target.resource,
                    kind: "ADDED",
                    object,
                })
                .collect())
        } else {
            store.changes_since(from)
        };
        (feed, backlog, store.rv().max(from))
    };
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|b| b == "true");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map(Duration::from_secs);
    let stream = WatchStream {
        shared,
        target,
        q,
        as_table,
        tx,
        bookmarks,
        last_rv: start,
    };
    tokio::spawn(stream.run(backlog, feed, timeout));
    let body = Body::from_stream(tokio_stream_from(rx));
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("transfer-encoding", "chunked")
        .body(body)
        .expect("response")
}

fn tokio_stream_from(
    mut rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

struct WatchStream {
    shared: Arc<Shared>,
    target: Target,
    q: HashMap<String, String>,
    as_table: bool,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    bookmarks: bool,
    last_rv: u64,
}

impl WatchStream {
    async fn run(
        mut self,
        backlog: Result<Vec<Change>, ApiError>,
        mut feed: broadcast::Receiver<Feed>,
        timeout: Option<Duration>,
    ) {
        let changes = match backlog {
            Ok(c) => c,
            Err(e) => {
                return self
                    .send_raw(&json!({"type": "ERROR", "object": e.status()}))
                    .await
            }
        };
        let replayed_to = changes.iter().map(|c| c.rv).max().unwrap_or(self.last_rv);
        for c in changes {
            if !self.forward(&c).await {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout.unwrap_or(Duration::from_secs(3600)));
        tokio::pin!(deadline);
        let mut ticks = tokio::time::interval(self.shared.bookmark_every);
        loop {
            tokio::select! {
                () = &mut deadline => return,
                () = self.tx.closed() => return,
                _ = ticks.tick(), if self.bookmarks => {
                    if !self.shared.paused.load(Ordering::SeqCst) {
                        let mark = json!({"type": "BOOKMARK", "object": {"kind": self.target.resource.kind(), "apiVersion": self.target.resource.api_version(), "metadata": {"resourceVersion": self.last_rv.to_string()}}});
                        self.send_raw(&mark).await;
                    }
                }
                msg = feed.recv() => match msg {
                    Ok(Feed::Change(c)) if c.rv > replayed_to => {
                        if !self.shared.paused.load(Ordering::SeqCst) && !self.forward(&c).await {
                            return;
                        }
                    }
                    Ok(Feed::Change(_)) => {}
                    Ok(Feed::Expired) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        let gone = ApiError { code: 410, reason: "Expired", message: "too old resource version".into() };
                        return self.send_raw(&json!({"type": "ERROR", "object": gone.status()})).await;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    }

    /// Send `c` if it matches this watch; false once the client is gone.
    async fn forward(&mut self, c: &Change) -> bool {
        let ns_ok = self
            .target
            .namespace
            .as_deref()
            .is_none_or(|ns| c.object["metadata"]["namespace"] == ns);
        if c.resource != self.target.resource || !ns_ok || !selected(&c.object, &self.q) {
            return true;
        }
        self.last_rv = self.last_rv.max(c.rv);
        let object = if self.as_table {
            table(c.resource, std::slice::from_ref(&c.object), c.rv, false)
        } else {
            c.object.clone()
        };
        self.send_raw(&json!({"type": c.kind, "object": object}))
            .await;
        !self.tx.is_closed()
    }

    async fn send_raw(&self, event: &Value) {
        let line = format!("{event}\n");
        let _ = self.tx.send(Ok(Bytes::from(line))).await;
    }
}
