//! The Ansible role in scripts/ansible: the playbook passes `ansible-playbook
//! --syntax-check`, and the role's template renders (through Ansible itself) a
//! configuration that `extip config check` accepts.

use std::path::Path;
use std::process::Command;

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .env("ANSIBLE_LOCALHOST_WARNING", "false")
        .env("ANSIBLE_INVENTORY_UNPARSED_WARNING", "false")
        .output()
        .unwrap_or_else(|e| panic!("{program} (ansible-core, installed by scripts/setup): {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{program} {args:?}:\n{text}");
    text
}

#[test]
fn the_role_passes_the_syntax_check_and_renders_a_valid_config() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let playbook = root.join("scripts/ansible/playbook.yml");
    run(
        "ansible-playbook",
        &[
            "--syntax-check",
            "-i",
            "localhost,",
            &playbook.to_string_lossy(),
        ],
    );

    let dir = std::env::temp_dir().join(format!("extip-ansible-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dest = dir.join("agent.toml");
    let template = root.join("scripts/ansible/roles/extip/templates/agent.toml.j2");
    let vars = r#"{"extip_etcd_endpoints": ["http://192.0.2.250:2379", "http://192.0.2.251:2379"],
        "extip_allowed_cidrs": ["198.51.100.0/24"], "extip_iface": "eth0",
        "extip_lease_ttl": "5s", "extip_extra_config": {"announce-count": 3, "label": ["zone=a"]}}"#;
    let module_args = format!("src={} dest={}", template.display(), dest.display());
    run(
        "ansible",
        &[
            "all",
            "-i",
            "localhost,",
            "-c",
            "local",
            "-m",
            "ansible.builtin.template",
            "-a",
            &module_args,
            "-e",
            vars,
        ],
    );
    let rendered = std::fs::read_to_string(&dest).expect("rendered config");
    let out = Command::new(env!("CARGO_BIN_EXE_extip"))
        .args(["config", "check", "--config"])
        .arg(&dest)
        .output()
        .expect("extip config check");
    assert!(
        out.status.success(),
        "the role renders a config extip rejects:\n{rendered}\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(rendered.contains(r#"interface = "eth0""#), "{rendered}");
    std::fs::remove_dir_all(&dir).unwrap();
}
