//! keepalived (VRRP) on the lab hosts, for benchmarks that compare it with extip.

use std::process::{Command, Stdio};

use super::Lab;

impl Lab {
    /// Start keepalived on host `i` with one VRRP instance owning `vip`/32 on `eth0`
    /// at its defaults (VRRPv2, advert_int 1); returns its index for
    /// [`Lab::signal_daemon`].
    pub fn start_keepalived(&mut self, i: usize, priority: u8, vip: &str) -> usize {
        self.start_keepalived_tuned(i, priority, vip, false)
    }

    /// The same; `tuned`: VRRPv3 with `advert_int 0.1` (a backup takes over after about
    /// 0.33 s of silence), the fastest keepalived operators run.
    pub fn start_keepalived_tuned(
        &mut self,
        i: usize,
        priority: u8,
        vip: &str,
        tuned: bool,
    ) -> usize {
        let name = self.hosts[i].name.clone();
        let config = self.dir.join(format!("keepalived-{name}.conf"));
        let (version, advert) = if tuned { ("3", "0.1") } else { ("2", "1") };
        let text = format!(
            "global_defs {{\n  router_id {name}\n  vrrp_version {version}\n}}\n\
             vrrp_instance extip_bench {{\n  state BACKUP\n  interface eth0\n  \
             virtual_router_id 51\n  priority {priority}\n  advert_int {advert}\n  \
             virtual_ipaddress {{\n    {vip}/32 dev eth0\n  }}\n}}\n"
        );
        std::fs::write(&config, text).expect("keepalived config");
        let pid = |what: &str| self.dir.join(format!("keepalived-{name}-{what}.pid"));
        let log = std::fs::File::create(self.dir.join(format!("keepalived-{name}.log")))
            .expect("keepalived log");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.hosts[i].ns, "keepalived"])
            .args(["--dont-fork", "--log-console", "--vrrp", "-f"])
            .arg(&config)
            .arg("-p")
            .arg(pid("main"))
            .arg("-r")
            .arg(pid("vrrp"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start keepalived");
        self.daemons.push(child);
        self.daemons.len() - 1
    }

    /// Send `signal` to daemon `index` (as returned when it was started).
    pub fn signal_daemon(&self, index: usize, signal: &str) {
        let pid = self.daemons[index].id().to_string();
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status();
    }
}
