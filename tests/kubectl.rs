//! The stand-in API server against the real `kubectl`: if the stand-in drifted from
//! the protocol kubectl speaks, these fail, so the sync tests cannot pass against a
//! server no real client could use.

mod kube;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use kube::ApiServer;

const WEB: &str = "apiVersion: v1
kind: Service
metadata:
  name: web
  labels: {app: web}
spec:
  selector: {app: web}
  ports:
  - port: 80
    protocol: TCP
  externalIPs: [198.51.100.20]
";

fn scratch() -> tempdir::Dir {
    tempdir::Dir::new("kubectl")
}

mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!(
                "extip-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).expect("scratch dir");
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[test]
fn kubectl_applies_gets_patches_and_deletes_a_service() {
    let dir = scratch();
    let api = ApiServer::start(None, "127.0.0.1", &dir.0);
    let out = api.apply(WEB);
    assert!(out.contains("service/web created"), "{out}");
    let table = api.kubectl(&["get", "svc"]);
    assert!(
        table.contains("EXTERNAL-IP") && table.contains("198.51.100.20"),
        "{table}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&api.kubectl(&["get", "svc", "web", "-o", "json"])).expect("json");
    assert_eq!(json["spec"]["externalIPs"][0], "198.51.100.20");
    // A second apply with a change goes through kubectl's strategic merge patch.
    let out = api.apply(&WEB.replace("198.51.100.20", "198.51.100.21"));
    assert!(out.contains("service/web configured"), "{out}");
    let svc = api.service("default", "web").expect("web");
    assert_eq!(
        svc["spec"]["externalIPs"],
        serde_json::json!(["198.51.100.21"])
    );
    assert_eq!(svc["spec"]["ports"][0]["port"], 80);
    let out = api.apply(&WEB.replace("198.51.100.20", "198.51.100.21"));
    assert!(out.contains("service/web unchanged"), "{out}");
    let out = api.kubectl(&["delete", "svc", "web"]);
    assert!(out.contains("service \"web\" deleted"), "{out}");
    let out = api.kubectl_output(&["get", "svc", "web"], None);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NotFound"),
        "{out:?}"
    );
}

#[test]
fn kubectl_applies_gets_and_deletes_an_endpoint_slice_of_discovery_v1() {
    let dir = scratch();
    let api = ApiServer::start(None, "127.0.0.1", &dir.0);
    let slice = kube::endpoint_slice("web", "web-abc", &[("k1", true), ("k3", true)]);
    let out = api.apply(&slice);
    assert!(
        out.contains("endpointslice.discovery.k8s.io/web-abc created"),
        "{out}"
    );
    let table = api.kubectl(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=web",
    ]);
    assert!(
        table.contains("ADDRESSTYPE") && table.contains("192.0.2.200,192.0.2.201"),
        "{table}"
    );
    // A changed readiness goes through kubectl's strategic merge patch; `endpoints`
    // has no merge key, so the list is replaced.
    let changed = kube::endpoint_slice("web", "web-abc", &[("k1", true), ("k3", false)]);
    let out = api.apply(&changed);
    assert!(out.contains("configured"), "{out}");
    let held = api.endpoint_slice("default", "web-abc").expect("slice");
    assert_eq!(held["apiVersion"], "discovery.k8s.io/v1");
    assert_eq!(held["endpoints"][1]["conditions"]["ready"], false);
    assert_eq!(held["endpoints"].as_array().map(Vec::len), Some(2));
    let json: serde_json::Value =
        serde_json::from_str(&api.kubectl(&["get", "endpointslice", "web-abc", "-o", "json"]))
            .expect("json");
    assert_eq!(json["endpoints"][0]["nodeName"], "k1");
    let out = api.kubectl(&["delete", "endpointslice", "web-abc"]);
    assert!(out.contains("deleted"), "{out}");
    assert!(api.endpoint_slice("default", "web-abc").is_none());
    let none = api.kubectl_output(&["get", "endpointslices", "web-abc"], None);
    assert!(!none.status.success());
}

#[test]
fn kubectl_get_watch_prints_changes_as_they_happen() {
    let dir = scratch();
    let api = ApiServer::start(None, "127.0.0.1", &dir.0);
    api.apply(WEB);
    let mut watch = api
        .kubectl_command(&["get", "svc", "-w", "--output-watch-events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl get -w");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = watch.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let next = |what: &str| -> String {
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("no {what} line from kubectl get -w"));
            if line.contains(what) {
                return line;
            }
        }
    };
    next("ADDED");
    api.merge_patch("web", r#"{"spec":{"externalIPs":["198.51.100.22"]}}"#);
    let line = next("MODIFIED");
    assert!(line.contains("198.51.100.22"), "{line}");
    api.kubectl(&["delete", "svc", "web"]);
    next("DELETED");
    let _ = watch.kill();
    let _ = watch.wait();
}

/// A watch as a raw client sees it: `curl` prints the chunked stream for `secs`.
fn raw_watch(api: &ApiServer, query: &str, secs: &str) -> String {
    let url = format!("http://{}/api/v1/services?watch=true&{query}", api.addr);
    let out = std::process::Command::new("curl")
        .args(["-sN", "--max-time", secs, &url])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn watches_get_bookmarks_when_asked_and_410_gone_after_compaction() {
    let dir = scratch();
    let api = ApiServer::start(None, "127.0.0.1", &dir.0);
    api.apply(WEB);
    let rv = api.service("default", "web").expect("web")["metadata"]["resourceVersion"]
        .as_str()
        .expect("resourceVersion")
        .to_string();
    let stream = raw_watch(
        &api,
        &format!("resourceVersion={rv}&allowWatchBookmarks=true"),
        "2.5",
    );
    let bookmark = stream
        .lines()
        .find(|l| l.contains("\"BOOKMARK\""))
        .unwrap_or_else(|| panic!("no bookmark in {stream:?}"));
    let event: serde_json::Value = serde_json::from_str(bookmark).expect("event JSON");
    assert_eq!(event["object"]["metadata"]["resourceVersion"], rv.as_str());
    let quiet = raw_watch(&api, &format!("resourceVersion={rv}"), "1.5");
    assert!(
        !quiet.contains("BOOKMARK"),
        "bookmark sent unasked: {quiet}"
    );

    api.merge_patch("web", r#"{"metadata":{"labels":{"v":"2"}}}"#);
    api.expire_watches();
    let gone = raw_watch(&api, &format!("resourceVersion={rv}"), "2");
    let event: serde_json::Value =
        serde_json::from_str(gone.lines().next().unwrap_or("")).expect("410 event");
    assert_eq!(event["type"], "ERROR", "{gone}");
    assert_eq!(event["object"]["code"], 410);
    assert_eq!(event["object"]["reason"], "Expired");
}

const POOL: &str = "apiVersion: extip.io/v1alpha1
kind: IpPool
metadata:
  name: edge
spec:
  cidr: 198.51.100.0/28
  mask: 32
  replicas: 2
";

#[test]
fn kubectl_installs_the_ippool_crd_and_the_schema_refuses_bad_pools_by_field() {
    let dir = scratch();
    let api = ApiServer::start(None, "127.0.0.1", &dir.0);
    let crd = std::fs::read_to_string("config/k8s/ippool-crd.yaml").expect("CRD file");
    let out = api.apply(&crd);
    assert!(
        out.contains("customresourcedefinition.apiextensions.k8s.io/ippools.extip.io created"),
        "{out}"
    );
    let out = api.kubectl(&["get", "crd"]);
    assert!(out.contains("ippools.extip.io"), "{out}");
    let out = api.apply(POOL);
    assert!(out.contains("ippool.extip.io/edge created"), "{out}");
    let table = api.kubectl(&["get", "ippools"]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "CIDR",
            "MASK",
            "REPLICAS",
            "ALLOCATED",
            "FREE",
            "AGE"
        ],
        "{table}"
    );
    assert!(table.contains("198.51.100.0/28"), "{table}");
    // The schema's default shows in what the server stored.
    let auto = api.kubectl(&["get", "ipp", "edge", "-o", "jsonpath={.spec.autoAssign}"]);
    assert_eq!(auto, "true");
    for (bad, field) in [
        ("cidr: 198.51.100.0/28", "cidr: 198.51.100.0/33"),
        // An IPv4 mask of 33 is refused by the CRD's CEL rule, which the stand-in does
        // not evaluate; extip-sync's own check of it is in tests/ippool.rs.
        ("mask: 32", "mask: 129"),
        ("replicas: 2", "replicas: 0"),
        ("replicas: 2", "replicas: most"),
    ]
    .map(|(from, to)| (POOL.replace("edge", "bad").replace(from, to), from))
    {
        let out = api.kubectl_output(&["apply", "-f", "-"], Some(&bad));
        let err = String::from_utf8_lossy(&out.stderr);
        let name = field.split(':').next().unwrap_or_default();
        assert!(!out.status.success(), "{bad} accepted");
        assert!(err.contains(&format!("spec.{name}")), "{bad}: {err}");
    }
    let out = api.kubectl_output(&["get", "ippool", "bad"], None);
    assert!(!out.status.success(), "a refused pool was stored");
    let out = api.kubectl(&["delete", "ippool", "edge"]);
    assert!(out.contains("ippool.extip.io \"edge\" deleted"), "{out}");
    let out = api.kubectl(&["get", "ippools"]);
    assert!(!out.contains("edge"), "{out}");
}
