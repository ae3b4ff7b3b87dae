//! What ships for extip-sync, checked offline: the Kubernetes manifests parse (kubectl,
//! locally), run two replicas that tell themselves apart, and carry a configuration
//! extip-sync accepts; the example host config is accepted too; and the agent binary
//! links no Kubernetes crate.

use std::path::Path;
use std::process::Command;

const SYNC: &str = env!("CARGO_BIN_EXE_extip-sync");

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every object of a manifest, parsed by kubectl without a server.
fn objects(file: &str) -> Vec<serde_json::Value> {
    let path = root().join(file);
    let out = Command::new("kubectl")
        .args(["label", "--local", "-o", "json", "checked=yes", "-f"])
        .arg(&path)
        .output()
        .expect("kubectl must be installed (scripts/setup installs it)");
    assert!(
        out.status.success(),
        "{file}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    serde_json::Deserializer::from_str(&text)
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("kubectl JSON")
}

fn check_config(path: &Path) -> String {
    let out = Command::new(SYNC)
        .args(["--check-config", "--config"])
        .arg(path)
        .env_remove("EXTIP_IDENTITY")
        .output()
        .expect("extip-sync");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {text}", path.display());
    text
}

#[test]
fn the_deployment_runs_two_named_replicas_with_a_config_extip_sync_accepts() {
    let all = objects("config/k8s/deployment.yaml");
    let deployment = all
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "extip-sync");
    let env = pod["containers"][0]["env"].as_array().expect("env");
    assert!(env.iter().any(|e| e["name"] == "EXTIP_IDENTITY"
        && e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"));
    let map = all
        .iter()
        .find(|o| o["kind"] == "ConfigMap")
        .expect("ConfigMap");
    let toml = map["data"]["sync.toml"].as_str().expect("sync.toml");
    let file = std::env::temp_dir().join(format!("extip-sync-cm-{}.toml", std::process::id()));
    std::fs::write(&file, toml).unwrap();
    let text = check_config(&file);
    std::fs::remove_file(&file).unwrap();
    assert!(
        text.contains("allow-external-ip: 198.51.100.0/24"),
        "{text}"
    );

    let rbac = objects("config/k8s/rbac.yaml");
    let binding = rbac
        .iter()
        .find(|o| o["kind"] == "ClusterRoleBinding")
        .expect("binding");
    assert_eq!(binding["subjects"][0]["name"], "extip-sync");
    assert_eq!(binding["subjects"][0]["namespace"], "extip-system");
}

#[test]
fn the_example_host_config_is_accepted_and_a_bad_one_names_its_key() {
    let text = check_config(&root().join("config/sync.example.toml"));
    assert!(text.contains("lease-ttl: 10m"), "{text}");
    let bad = std::env::temp_dir().join(format!("extip-sync-bad-{}.toml", std::process::id()));
    std::fs::write(&bad, "allow-external-ip = [\"198.51.100.0/33\"]\n").unwrap();
    let out = Command::new(SYNC)
        .args(["--check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    std::fs::remove_file(&bad).unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("allow-external-ip:") && err.contains("198.51.100.0/33"),
        "{err}"
    );
}

#[test]
fn the_agent_binary_links_no_kubernetes_crate() {
    let symbols = |bin: &str| {
        let out = Command::new("nm")
            .args(["-C", bin])
            .output()
            .expect("nm (binutils)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let kube = |text: &str| {
        text.lines()
            .filter(|l| l.contains("kube_client::") || l.contains("k8s_openapi::"))
            .count()
    };
    // The check can see them: the sync binary has plenty.
    assert!(kube(&symbols(SYNC)) > 100);
    assert_eq!(kube(&symbols(env!("CARGO_BIN_EXE_extip"))), 0);
}
