//! A second etcd beside the lab's plain one, with TLS and client certificates or with
//! users and roles; certificates made with the openssl command for each lab.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{run, wait_for, Lab};

/// Client port of the TLS etcd (the plain one listens on 2379).
pub const TLS_PORT: u16 = 2479;
/// Client port of the etcd with authentication.
pub const AUTH_PORT: u16 = 2579;

/// Files of a lab's certificate authority.
pub struct Pki {
    /// The CA certificate.
    pub ca: PathBuf,
    /// etcd's server certificate and key (SAN: the etcd address and 127.0.0.1).
    pub server: (PathBuf, PathBuf),
    /// A client certificate and key (CN extip).
    pub client: (PathBuf, PathBuf),
    /// Another CA that signed nothing here: the wrong CA.
    pub other_ca: PathBuf,
}

fn openssl(args: &[&str]) {
    run("openssl", args);
}

impl Lab {
    /// Make a CA, a server and a client certificate, and an unrelated CA.
    pub fn make_pki(&self) -> Pki {
        let p = |name: &str| self.dir.join(name);
        let s = |path: &PathBuf| path.to_string_lossy().into_owned();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for (ca, cn) in [("ca", "extip-lab-ca"), ("other-ca", "somebody-else")] {
            let mut args = vec!["req", "-x509"];
            args.extend(ec);
            let (key, pem, subj) = (
                s(&p(&format!("{ca}.key"))),
                s(&p(&format!("{ca}.pem"))),
                format!("/CN={cn}"),
            );
            args.extend(["-keyout", &key, "-out", &pem, "-days", "2", "-subj", &subj]);
            openssl(&args);
        }
        let addr = &self.etcd[0].addr;
        for (name, cn, ext) in [
            (
                "server",
                "etcd",
                format!("subjectAltName=IP:{addr},IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n"),
            ),
            (
                "client",
                "extip",
                "extendedKeyUsage=clientAuth\n".to_string(),
            ),
        ] {
            let (key, csr, pem, extfile) = (
                s(&p(&format!("{name}.key"))),
                s(&p(&format!("{name}.csr"))),
                s(&p(&format!("{name}.pem"))),
                p(&format!("{name}.ext")),
            );
            std::fs::write(&extfile, ext).expect("ext file");
            let mut args = vec!["req"];
            args.extend(ec);
            let subj = format!("/CN={cn}");
            args.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
            openssl(&args);
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &s(&p("ca.pem")),
                "-CAkey",
                &s(&p("ca.key")),
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &s(&extfile),
            ]);
        }
        Pki {
            ca: p("ca.pem"),
            server: (p("server.pem"), p("server.key")),
            client: (p("client.pem"), p("client.key")),
            other_ca: p("other-ca.pem"),
        }
    }

    /// Start a single-member etcd in the etcd namespace on `port` (peer `port + 1`),
    /// with extra flags; its client URL uses `scheme`.
    fn start_extra_etcd(
        &mut self,
        name: &str,
        port: u16,
        scheme: &str,
        flags: &[String],
    ) -> String {
        let m = &self.etcd[0];
        let client = format!("{scheme}://{}:{port}", m.addr);
        let peer = format!("http://127.0.0.1:{}", port + 1);
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).expect("log");
        let child = Command::new("ip")
            .args(["netns", "exec", &m.ns, "etcd", "--name", name])
            .arg("--data-dir")
            .arg(self.dir.join(format!("{name}-data")))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("{name}={peer}")])
            .args(flags)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.daemons.push(child);
        client
    }

    /// An etcd that serves only TLS and wants a client certificate signed by the CA.
    pub fn start_tls_etcd(&mut self, pki: &Pki) -> String {
        let s = |p: &PathBuf| p.to_string_lossy().into_owned();
        let flags = vec![
            "--cert-file".into(),
            s(&pki.server.0),
            "--key-file".into(),
            s(&pki.server.1),
            "--trusted-ca-file".into(),
            s(&pki.ca),
            "--client-cert-auth".into(),
        ];
        let url = self.start_extra_etcd("tls", TLS_PORT, "https", &flags);
        let tls = [
            format!("--cacert={}", s(&pki.ca)),
            format!("--cert={}", s(&pki.client.0)),
            format!("--key={}", s(&pki.client.1)),
        ];
        let ready = wait_for(Duration::from_secs(20), || {
            self.etcdctl_with(&url, &tls, &["endpoint", "health"])
                .is_ok()
        });
        assert!(
            ready.is_some(),
            "TLS etcd not healthy: {}",
            self.file("tls.log")
        );
        url
    }

    /// An etcd with authentication: `root` (password `rootpw`) and `extip` (password
    /// `extippw`), whose role may read and write only keys under `/extip/`.
    pub fn start_auth_etcd(&mut self) -> String {
        let url = self.start_extra_etcd("auth", AUTH_PORT, "http", &[]);
        let ready = wait_for(Duration::from_secs(20), || {
            self.etcdctl_with(&url, &[], &["endpoint", "health"])
                .is_ok()
        });
        assert!(
            ready.is_some(),
            "auth etcd not healthy: {}",
            self.file("auth.log")
        );
        for args in [
            vec!["user", "add", "root:rootpw"],
            vec!["role", "add", "extip"],
            vec![
                "role",
                "grant-permission",
                "extip",
                "--prefix=true",
                "readwrite",
                "/extip/",
            ],
            vec!["user", "add", "extip:extippw"],
            vec!["user", "grant-role", "extip", "extip"],
            vec!["auth", "enable"],
        ] {
            self.etcdctl_with(&url, &[], &args)
                .expect("etcdctl auth setup");
        }
        url
    }

    /// etcdctl against `url` with `extra` global flags (TLS files, `--user`).
    pub fn etcdctl_with(
        &self,
        url: &str,
        extra: &[String],
        args: &[&str],
    ) -> Result<String, String> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.hosts[0].ns,
                "etcdctl",
                "--endpoints",
                url,
            ])
            .args(["--command-timeout", "3s"])
            .args(extra)
            .args(args)
            .env("ETCDCTL_API", "3")
            .output()
            .expect("etcdctl");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}
