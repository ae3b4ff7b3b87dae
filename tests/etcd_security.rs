//! The agent against a TLS etcd that wants client certificates, against a wrong CA, and
//! as an etcd user whose role only reaches `/extip/`.

mod lab;

use std::process::Command;
use std::time::Duration;

use lab::{wait_for, Lab, EXTIP};

const VIP: &str = "198.51.100.10";

fn path(p: &std::path::Path) -> String {
    p.to_string_lossy().into_owned()
}

#[test]
fn the_agent_serves_through_tls_with_a_client_certificate_and_names_a_wrong_ca() {
    let mut lab = Lab::new(2);
    let pki = lab.make_pki();
    let url = lab.start_tls_etcd(&pki);
    let (ca, cert, key) = (path(&pki.ca), path(&pki.client.0), path(&pki.client.1));
    let tls = [
        format!("--cacert={ca}"),
        format!("--cert={cert}"),
        format!("--key={key}"),
    ];
    lab.etcdctl_with(&url, &tls, &["put", &format!("/extip/ips/{VIP}"), "{}"])
        .expect("put through TLS");
    let args = [
        "--etcd",
        &url,
        "--etcd-cacert",
        &ca,
        "--etcd-cert",
        &cert,
        "--etcd-key",
        &key,
    ];
    lab.start_agent(0, &args);
    let served = wait_for(Duration::from_secs(10), || lab.holders(VIP) == vec![0]);
    assert!(
        served.is_some(),
        "not served through TLS:\n{}",
        lab.agent_log(0)
    );

    // The CLI uses the same flags.
    let status = Command::new("ip")
        .args(["netns", "exec", &lab.hosts[0].ns, EXTIP])
        .args([
            "status",
            "--etcd",
            &url,
            "--etcd-cacert",
            &ca,
            "--etcd-cert",
            &cert,
        ])
        .args(["--etcd-key", &key])
        .output()
        .expect("extip status");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success() && text.contains("h1"),
        "{text}{}",
        String::from_utf8_lossy(&status.stderr)
    );

    // A wrong CA: the agent never gets in, and says why.
    let wrong = path(&pki.other_ca);
    let args = [
        "--etcd",
        &url,
        "--etcd-cacert",
        &wrong,
        "--etcd-cert",
        &cert,
        "--etcd-key",
        &key,
    ];
    lab.start_agent(1, &args);
    let said = wait_for(Duration::from_secs(10), || {
        lab.agent_log(1)
            .contains("not signed by the CA in --etcd-cacert")
    });
    assert!(said.is_some(), "no clear error:\n{}", lab.agent_log(1));
    assert_eq!(lab.holders(VIP), vec![0]);
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.hosts[0].ns, EXTIP])
        .args(["status", "--etcd", &url, "--etcd-cacert", &wrong])
        .output()
        .expect("extip status");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--etcd-cacert"),
        "{err}"
    );
    eprintln!("wrong CA: {err}");
}

#[test]
fn the_agent_works_as_an_etcd_user_restricted_to_the_extip_prefix() {
    let mut lab = Lab::new(1);
    let url = lab.start_auth_etcd();
    let root = ["--user=root:rootpw".to_string()];
    lab.etcdctl_with(&url, &root, &["put", &format!("/extip/ips/{VIP}"), "{}"])
        .expect("put as root");
    // The role is real: the extip user cannot write outside its prefix.
    let extip = ["--user=extip:extippw".to_string()];
    let denied = lab.etcdctl_with(&url, &extip, &["put", "/other", "x"]);
    assert!(denied.is_err(), "the extip user may write outside /extip/");

    let password = lab.write_file("etcd-password", "extippw\n");
    let args = [
        "--etcd",
        &url,
        "--etcd-user",
        "extip",
        "--etcd-password-file",
        &password,
    ];
    lab.start_agent(0, &args);
    let served = wait_for(Duration::from_secs(10), || lab.holders(VIP) == vec![0]);
    assert!(
        served.is_some(),
        "not served as user extip:\n{}",
        lab.agent_log(0)
    );
    let node = lab.etcdctl_with(
        &url,
        &root,
        &["get", "/extip/nodes/h1", "--print-value-only"],
    );
    assert!(node.is_ok_and(|v| v.contains("\"h1\"")));
}
