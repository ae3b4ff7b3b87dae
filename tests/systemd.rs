//! systemd integration in the lab: the agent sends READY once it serves and pings the
//! watchdog, over the `$NOTIFY_SOCKET` a test provides (no systemd runs here).

mod lab;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use lab::Lab;

/// Datagrams received on `socket` until `until`, with the time each arrived.
fn messages(socket: &UnixDatagram, until: Instant) -> Vec<(Instant, String)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < until {
        socket
            .set_read_timeout(Some(
                until
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
            ))
            .expect("timeout");
        if let Ok(n) = socket.recv(&mut buf) {
            got.push((
                Instant::now(),
                String::from_utf8_lossy(&buf[..n]).into_owned(),
            ));
        }
    }
    got
}

#[test]
fn the_agent_says_ready_once_it_holds_its_lease_and_pings_the_watchdog() {
    let mut lab = Lab::new(1);
    let path = std::env::temp_dir().join(format!("extip-notify-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let socket = UnixDatagram::bind(&path).expect("notify socket");
    lab.agent_env = vec![
        ("NOTIFY_SOCKET".into(), path.to_string_lossy().into_owned()),
        ("WATCHDOG_USEC".into(), "1000000".into()),
    ];
    lab.put("/extip/ips/198.51.100.10", "{}");
    lab.start_agent(0, &[]);
    let started = Instant::now();
    let mut got = Vec::new();
    while !got
        .iter()
        .any(|(_, m): &(Instant, String)| m.lines().any(|l| l == "READY=1"))
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no READY=1 in {got:?}"
        );
        got.extend(messages(
            &socket,
            Instant::now() + Duration::from_millis(20),
        ));
    }
    // READY comes after the lease and the first reconcile: the IP is on the host now.
    assert!(
        lab.get("/extip/nodes/h1").is_some() && !lab.holders("198.51.100.10").is_empty(),
        "READY before the agent served"
    );
    let ready_after = started.elapsed();
    let got = messages(&socket, Instant::now() + Duration::from_secs(3));
    let _ = std::fs::remove_file(&path);
    let pings = got
        .iter()
        .filter(|(_, m)| m.lines().any(|l| l == "WATCHDOG=1"))
        .count();
    // WatchdogSec=1s: a ping every 0.5 s, 6 in 3 s (generous: at least 4).
    assert!(pings >= 4, "watchdog pings: {got:?}");
    eprintln!("READY after {ready_after:?}, {pings} watchdog pings in 3 s");
}

#[test]
fn logs_are_json_objects_with_fields_or_plain_lines_without_time_under_journald() {
    let mut lab = Lab::new(2);
    lab.agent_env = vec![("EXTIP_LOG_FORMAT".into(), "json".into())];
    lab.start_agent(0, &[]);
    lab.agent_env = vec![("JOURNAL_STREAM".into(), "8:1234".into())];
    lab.start_agent(1, &[]);
    let up = lab::wait_for(Duration::from_secs(10), || {
        (1..=2).all(|h| lab.get(&format!("/extip/nodes/h{h}")).is_some())
    });
    assert!(up.is_some());
    let json = lab.agent_log(0);
    let lines: Vec<serde_json::Value> = json
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let start = lines
        .iter()
        .find(|l| l["fields"]["message"] == "extip agent starting")
        .unwrap_or_else(|| panic!("no start line: {json}"));
    assert_eq!(start["fields"]["node"], "h1", "{json}");
    let plain = lab.agent_log(1);
    let line = plain
        .lines()
        .find(|l| l.contains("extip agent starting"))
        .unwrap_or("");
    assert!(
        line.trim_start().starts_with("INFO"),
        "a timestamp under journald: {line}"
    );
}
