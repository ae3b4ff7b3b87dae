//! A stand-in Kubernetes API server for Services and Events (no real kube-apiserver
//! can be installed here). It speaks the real protocol: discovery, list with
//! resourceVersion, watch with bookmarks, `410 Gone` after compaction, the status
//! subresource, merge and strategic-merge patches, server-side tables. The real
//! `kubectl` on the machine is the check that it does: see tests/kubectl.rs.

#![allow(dead_code)]

mod crd;
mod discovery;
mod http;
mod json;
#[path = "../common/netns.rs"]
mod netns;
mod store;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

use http::Shared;
use store::{Resource, Store};

/// The real kubectl on this machine.
pub const KUBECTL: &str = "kubectl";

/// A running stand-in API server; dropped, it stops.
pub struct ApiServer {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    dir: PathBuf,
    /// Namespace kubectl runs in (the server's), `None` for the root namespace.
    netns: Option<String>,
}

impl ApiServer {
    /// Listen on `ip` (port chosen by the kernel) inside network namespace `netns`
    /// (`None`: this one); kubeconfig and kubectl's cache go to `dir`.
    pub fn start(netns: Option<&str>, ip: &str, dir: &Path) -> Self {
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new()),
            paused: AtomicBool::new(false),
            bookmark_every: Duration::from_secs(1),
            requests: Mutex::new(Vec::new()),
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let bind: SocketAddr = format!("{ip}:0").parse().expect("bind address");
        let ns = netns.map(str::to_string);
        let state = shared.clone();
        let thread = std::thread::spawn(move || {
            if let Some(ns) = &ns {
                netns::enter_namespace(ns);
            }
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(serve(state, bind, addr_tx, stop_rx));
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("stand-in API server listening");
        let server = ApiServer {
            addr,
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
            dir: dir.to_path_buf(),
            netns: netns.map(str::to_string),
        };
        std::fs::write(server.kubeconfig(), server.kubeconfig_text()).expect("kubeconfig");
        server
    }

    /// Path of a kubeconfig that points at this server.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    fn kubeconfig_text(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: http://{}\n\
             users:\n- name: lab\n  user:\n    token: lab-token\ncontexts:\n- name: lab\n  context:\n    cluster: lab\n    user: lab\n    namespace: default\n\
             current-context: lab\n",
            self.addr
        )
    }

    /// A `kubectl` command aimed at this server (in its namespace), not yet run.
    pub fn kubectl_command(&self, args: &[&str]) -> Command {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, KUBECTL]);
                c
            }
            None => Command::new(KUBECTL),
        };
        let cache = self.dir.join("kube-cache");
        cmd.arg("--kubeconfig").arg(self.kubeconfig());
        cmd.arg("--cache-dir").arg(cache);
        cmd.args(args);
        cmd
    }

    /// Run kubectl; its output, or a panic with its stderr.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = self.kubectl_output(args, None);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run kubectl with `stdin` fed in; the whole output whatever the exit code.
    pub fn kubectl_output(&self, args: &[&str], stdin: Option<&str>) -> Output {
        use std::io::Write;
        use std::process::Stdio;
        let mut cmd = self.kubectl_command(args);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("kubectl runs");
        let mut input = child.stdin.take().expect("stdin");
        input
            .write_all(stdin.unwrap_or("").as_bytes())
            .expect("kubectl stdin");
        drop(input);
        child.wait_with_output().expect("kubectl output")
    }

    /// `kubectl apply -f -` with `manifest`.
    pub fn apply(&self, manifest: &str) -> String {
        let out = self.kubectl_output(&["apply", "-f", "-"], Some(manifest));
        assert!(
            out.status.success(),
            "kubectl apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl patch svc NAME --type merge -p PATCH`.
    pub fn merge_patch(&self, name: &str, patch: &str) -> String {
        self.kubectl(&["patch", "svc", name, "--type", "merge", "-p", patch])
    }

    /// `kubectl get events -o json` for the object named `name`, as kubectl prints it.
    pub fn events_of(&self, name: &str) -> String {
        let selector = format!("involvedObject.name={name}");
        self.kubectl(&["get", "events", "--field-selector", &selector, "-o", "json"])
    }

    /// An EndpointSlice as the server holds it.
    pub fn endpoint_slice(&self, ns: &str, name: &str) -> Option<Value> {
        self.shared
            .store
            .lock()
            .expect("store")
            .get(Resource::EndpointSlices, ns, name)
            .ok()
    }

    /// A Service as the server holds it.
    pub fn service(&self, ns: &str, name: &str) -> Option<Value> {
        self.shared
            .store
            .lock()
            .expect("store")
            .get(Resource::Services, ns, name)
            .ok()
    }

    /// Every Event the server holds.
    pub fn events(&self) -> Vec<Value> {
        self.shared
            .store
            .lock()
            .expect("store")
            .list(Resource::Events, None)
    }

    /// From now on open watches deliver nothing (the watch is "down").
    pub fn pause_watches(&self) {
        self.shared.paused.store(true, Ordering::SeqCst);
    }

    /// Compact history: every open watch ends with `410 Gone`, a watch from an older
    /// resourceVersion gets `410 Gone`; watches work again afterwards.
    pub fn expire_watches(&self) {
        self.shared.store.lock().expect("store").compact();
        self.shared.paused.store(false, Ordering::SeqCst);
    }

    /// Every request so far, as `METHOD path?query user-agent`.
    pub fn requests(&self) -> Vec<String> {
        self.shared.requests.lock().expect("requests").clone()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An EndpointSlice manifest `name` of Service `service` (port 80), one endpoint per
/// `(node, ready)`, each with an address from 192.0.2.200 on (only its node matters).
pub fn endpoint_slice(service: &str, name: &str, endpoints: &[(&str, bool)]) -> String {
    let conditions: Vec<(&str, String)> = endpoints
        .iter()
        .map(|&(node, ready)| (node, format!("{{ready: {ready}}}")))
        .collect();
    slice_manifest(service, name, &conditions)
}

/// An endpoint's state, as the EndpointSlice controller writes its conditions.
#[derive(Debug, Clone, Copy)]
pub enum EndpointState {
    /// Ready and serving.
    Ready,
    /// Its pod is starting: not ready yet.
    Starting,
    /// Its pod is terminating but still passes its readiness probe (KEP-1669).
    TerminatingServing,
}

/// [`endpoint_slice`] with each endpoint's full conditions (ready, serving, terminating).
pub fn endpoint_slice_of(service: &str, name: &str, endpoints: &[(&str, EndpointState)]) -> String {
    let conditions: Vec<(&str, String)> = endpoints
        .iter()
        .map(|&(node, state)| {
            let text = match state {
                EndpointState::Ready => "{ready: true, serving: true, terminating: false}",
                EndpointState::Starting => "{ready: false, serving: false, terminating: false}",
                EndpointState::TerminatingServing => {
                    "{ready: false, serving: true, terminating: true}"
                }
            };
            (node, text.to_string())
        })
        .collect();
    slice_manifest(service, name, &conditions)
}

fn slice_manifest(service: &str, name: &str, endpoints: &[(&str, String)]) -> String {
    let mut text = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  \
         labels:\n    kubernetes.io/service-name: {service}\naddressType: IPv4\n\
         ports:\n- name: http\n  port: 80\n  protocol: TCP\nendpoints:"
    );
    if endpoints.is_empty() {
        text.push_str(" []");
    }
    for (i, (node, conditions)) in endpoints.iter().enumerate() {
        text.push_str(&format!(
            "\n- addresses: [192.0.2.{}]\n  nodeName: {node}\n  conditions: {conditions}",
            200 + i
        ));
    }
    text.push('\n');
    text
}

async fn serve(
    shared: Arc<Shared>,
    bind: SocketAddr,
    addr_tx: std::sync::mpsc::Sender<SocketAddr>,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .expect("bind stand-in API server");
    addr_tx
        .send(listener.local_addr().expect("local addr"))
        .expect("report address");
    let app = axum::Router::new().fallback(move |method, uri, headers, body: axum::body::Bytes| {
        let shared = shared.clone();
        async move { http::handle(shared, method, uri, headers, body).await }
    });
    // Not a graceful shutdown: that would wait for every open watch to end.
    tokio::select! {
        served = axum::serve(listener, app) => served.expect("serve"),
        _ = stop => {}
    }
}
