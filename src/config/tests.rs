use super::*;

fn base() -> AgentSettings {
    AgentSettings {
        allowed_cidr: Some(vec!["198.51.100.0/24".into()]),
        ..Default::default()
    }
}

#[test]
fn defaults_fill_what_is_not_given() {
    let c = AgentConfig::from_settings(base(), "host-a").unwrap();
    assert_eq!(c.etcd, vec![DEFAULT_ETCD.to_string()]);
    assert_eq!(c.prefix, "/extip");
    assert_eq!(c.node, "host-a");
    assert_eq!(c.interfaces, ["lo"]);
    assert_eq!(
        c.lease_ttl,
        Duration::from_secs(10),
        "peers on: a TTL for etcd trouble"
    );
    assert_eq!(c.resync, Duration::from_secs(30));
    let off = AgentSettings {
        peers: Some("off".into()),
        ..base()
    };
    let c = AgentConfig::from_settings(off, "host-a").unwrap();
    assert_eq!(
        c.lease_ttl,
        Duration::from_secs(2),
        "peers off: the TTL notices deaths"
    );
}

#[test]
fn errors_name_the_setting() {
    let cases: Vec<(AgentSettings, &str)> = vec![
        (
            AgentSettings {
                lease_ttl: Some("500ms".into()),
                ..base()
            },
            "lease-ttl: `500ms` is below the minimum lease TTL of 1s",
        ),
        (
            AgentSettings {
                lease_ttl: Some("2500ms".into()),
                ..base()
            },
            "lease-ttl: `2500ms`: etcd leases are whole seconds",
        ),
        (
            AgentSettings {
                address_lifetime: Some("2s".into()),
                ..base()
            },
            "address-lifetime: `2s`: whole seconds, at least 3s",
        ),
        (
            AgentSettings {
                allowed_cidr: None,
                ..base()
            },
            "allowed-cidr: no CIDR given",
        ),
        (
            AgentSettings {
                allowed_cidr: Some(vec!["10.0.0.0/33".into()]),
                ..base()
            },
            "allowed-cidr: `10.0.0.0/33` is not a CIDR",
        ),
        (
            AgentSettings {
                etcd: Some(vec!["127.0.0.1:2379".into()]),
                ..base()
            },
            "etcd: `127.0.0.1:2379` must start with http://",
        ),
        (
            AgentSettings {
                label: Some(vec!["zone".into()]),
                ..base()
            },
            "label: `zone` is not key=value",
        ),
        (
            AgentSettings {
                on_etcd_loss: Some("drop".into()),
                ..base()
            },
            "on-etcd-loss: `drop` is neither",
        ),
        (
            AgentSettings {
                prefix: Some("extip".into()),
                ..base()
            },
            "prefix:",
        ),
        (
            AgentSettings {
                interface: Some(vec!["a very long interface".into()]),
                ..base()
            },
            "interface:",
        ),
        (
            AgentSettings {
                interface: Some(vec!["lo".into(), "lo".into()]),
                ..base()
            },
            "interface: `lo` is given twice",
        ),
        (
            AgentSettings {
                fenced_router: Some(vec!["192.0.2.253".into()]),
                ..base()
            },
            "fenced-router: needs export-routes",
        ),
        (
            AgentSettings {
                fenced_router: Some(vec!["router".into()]),
                export_routes: Some(true),
                ..base()
            },
            "fenced-router: `router` is not an IP address",
        ),
        (
            AgentSettings {
                fenced_router: Some(vec!["127.0.0.1".into()]),
                export_routes: Some(true),
                ..base()
            },
            "fenced-router: `127.0.0.1` cannot be a BGP peer",
        ),
    ];
    for (settings, want) in cases {
        let err = AgentConfig::from_settings(settings, "h").unwrap_err();
        assert!(err.to_string().starts_with(want), "{err} != {want}");
    }
    let err = AgentConfig::from_settings(base(), "").unwrap_err();
    assert!(err.to_string().starts_with("node:"), "{err}");
}

#[test]
fn the_shipped_example_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/agent.example.toml");
    let settings = AgentSettings::from_file(&path).unwrap();
    let c = AgentConfig::from_settings(settings, "h").unwrap();
    assert_eq!(c.allowed.len(), 2);
}

#[test]
fn file_keys_match_flags_and_unknown_keys_are_named() {
    let dir = std::env::temp_dir().join(format!("extip-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        "etcd = [\"http://192.0.2.1:2379\"]\nlease-ttl = \"3s\"\nallowed-cidr = [\"198.51.100.0/24\"]\ninterface = \"eth0\"\n",
    )
    .unwrap();
    let file = AgentSettings::from_file(&good).unwrap();
    let flags = AgentSettings {
        lease_ttl: Some("4s".into()),
        ..Default::default()
    };
    let c = AgentConfig::from_settings(flags.over(file), "h").unwrap();
    assert_eq!(c.lease_ttl, Duration::from_secs(4));
    assert_eq!(c.etcd, vec!["http://192.0.2.1:2379".to_string()]);
    assert_eq!(c.interfaces, ["eth0"]);
    std::fs::write(&good, "interface = [\"lo\", \"eth0\"]\n").unwrap();
    let file = AgentSettings::from_file(&good).unwrap();
    assert_eq!(file.interface, Some(vec!["lo".into(), "eth0".into()]));

    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "lease_tll = \"3s\"\n").unwrap();
    let err = AgentSettings::from_file(&bad).unwrap_err().to_string();
    assert!(err.contains("unknown field `lease_tll`"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_checked_file_reports_every_problem_with_its_key() {
    let dir = std::env::temp_dir().join(format!("extip-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("agent.toml");
    std::fs::write(
        &file,
        "colour = \"red\"\nlease-ttl = \"0s\"\nallowed-cidr = [\"198.51.100.0/33\"]\nflavour = 1\n",
    )
    .unwrap();
    let (settings, unknown) = AgentSettings::check_file(&file).unwrap();
    let mut problems: Vec<String> = unknown.iter().map(ToString::to_string).collect();
    let invalid = AgentConfig::check(settings, "h").unwrap_err();
    problems.extend(invalid.iter().map(ToString::to_string));
    let starts: Vec<&str> = problems
        .iter()
        .map(|p| p.split(':').next().unwrap())
        .collect();
    assert_eq!(
        starts,
        ["colour", "flavour", "lease-ttl", "allowed-cidr"],
        "{problems:#?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn fenced_routers_are_parsed_once_each() {
    let settings = AgentSettings {
        fenced_router: Some(vec![
            "192.0.2.253".into(),
            "2001:db8::fd".into(),
            "192.0.2.253".into(),
        ]),
        export_routes: Some(true),
        ..base()
    };
    let c = AgentConfig::from_settings(settings, "h").unwrap();
    let want: Vec<std::net::IpAddr> = vec![
        "192.0.2.253".parse().unwrap(),
        "2001:db8::fd".parse().unwrap(),
    ];
    assert_eq!(c.fenced_routers, want);
    assert!(AgentConfig::from_settings(base(), "h")
        .unwrap()
        .fenced_routers
        .is_empty());
}
