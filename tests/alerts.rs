//! The alert rules and the dashboard (`config/prometheus`, `config/grafana`): promtool
//! checks and unit-tests the rules and parses every panel query; every alert has a unit
//! test where it fires and one where it stays quiet; and every metric and label a rule,
//! an annotation or a panel names is one that a live agent or extip-sync exports, so
//! renaming a metric in the code fails here.

// The lab and the stand-in API server both include the one-function tests/common/netns.rs.
#![allow(clippy::duplicate_mod)]

mod kube;
mod lab;
mod synclab;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use promql_parser::parser::{self, Expr, LabelModifier};

use lab::wait_for;
use synclab::{service, wait_leader, SyncLab};

const RULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/config/prometheus/extip.rules.yml"
);
const RULE_TESTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/config/prometheus/extip.rules.test.yml"
);
const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/grafana/extip.json");

/// Labels Prometheus adds to every scraped series.
const TARGET_LABELS: [&str; 2] = ["job", "instance"];

/// One PromQL expression, where it comes from, and the annotation texts it feeds.
struct Query {
    origin: String,
    expr: String,
    annotations: Vec<String>,
}

fn yaml(path: &str) -> serde_yaml::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn text_of(v: &serde_yaml::Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// Every rule of the rules file, in order: (record name or alert name, is alert, query).
fn rules() -> Vec<(String, bool, Query)> {
    let file = yaml(RULES);
    let groups = file["groups"].as_sequence().expect("groups");
    let mut out = Vec::new();
    for rule in groups
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules"))
    {
        let alert = rule.get("alert").is_some();
        let name = text_of(if alert {
            &rule["alert"]
        } else {
            &rule["record"]
        });
        let annotations = rule["annotations"]
            .as_mapping()
            .map(|m| m.values().map(text_of).collect())
            .unwrap_or_default();
        let query = Query {
            origin: format!("rule {name}"),
            expr: text_of(&rule["expr"]),
            annotations,
        };
        out.push((name, alert, query));
    }
    out
}

/// Every panel query of the dashboard.
fn panel_queries() -> Vec<Query> {
    let text = std::fs::read_to_string(DASHBOARD).expect("dashboard");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let panels = dash["panels"].as_array().expect("panels");
    assert!(!panels.is_empty(), "a dashboard without panels");
    panels
        .iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or("?").to_string();
            p["targets"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |t| Query {
                    origin: format!("panel {title:?}"),
                    expr: t["expr"].as_str().unwrap_or_default().to_string(),
                    annotations: Vec::new(),
                })
        })
        .collect()
}

/// Run promtool; its output. A missing promtool fails the test: scripts/setup installs it.
fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool is missing: run scripts/test, which installs it (scripts/setup)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn promtool_accepts_the_rules_and_their_unit_tests() {
    let checked = promtool(&["check", "rules", RULES]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&["test", "rules", RULE_TESTS]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn promtool_parses_every_dashboard_query() {
    let queries = panel_queries();
    let mut file = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, q) in queries.iter().enumerate() {
        assert!(!q.expr.trim().is_empty(), "{}: empty query", q.origin);
        let expr = serde_json::to_string(&q.expr).expect("quoted");
        file.push_str(&format!(
            "      - record: panel_{i}\n        expr: {expr}\n"
        ));
    }
    let path = std::env::temp_dir().join(format!("extip-panels-{}.yml", std::process::id()));
    std::fs::write(&path, file).expect("write panel rules");
    let checked = promtool(&["check", "rules", &path.to_string_lossy()]);
    let _ = std::fs::remove_file(&path);
    let want = format!("{} rules found", queries.len());
    assert!(checked.contains(&want), "{checked}");
}

#[test]
fn every_alert_has_a_firing_and_a_quiet_unit_test() {
    let tests = yaml(RULE_TESTS);
    let mut firing = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for case in tests["tests"].as_sequence().expect("tests") {
        for check in case["alert_rule_test"].as_sequence().into_iter().flatten() {
            let name = text_of(&check["alertname"]);
            let expected = check["exp_alerts"].as_sequence().map_or(0, Vec::len);
            if expected > 0 {
                firing.insert(name);
            } else {
                quiet.insert(name);
            }
        }
    }
    let alerts: Vec<String> = rules().into_iter().filter(|r| r.1).map(|r| r.0).collect();
    assert!(alerts.len() >= 9, "alerts: {alerts:?}");
    for alert in &alerts {
        assert!(
            firing.contains(alert),
            "{alert}: no unit test where it fires"
        );
        assert!(
            quiet.contains(alert),
            "{alert}: no unit test where it stays quiet"
        );
    }
}

/// Metric names and their label names, from a Prometheus text exposition.
fn exported(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out.entry(line[..end].to_string()).or_default();
        if let Some(rest) = line[end..].strip_prefix('{') {
            let mut in_value = false;
            let mut name = String::new();
            for c in rest.chars() {
                match (c, in_value) {
                    ('"', _) => in_value = !in_value,
                    ('=', false) => {
                        labels.insert(std::mem::take(&mut name));
                    }
                    (',' | '}', false) => name.clear(),
                    (c, false) if !c.is_whitespace() => name.push(c),
                    _ => {}
                }
            }
        }
    }
    for labels in out.values_mut() {
        labels.extend(TARGET_LABELS.map(String::from));
    }
    out
}

/// What a name resolves to: exported series, recording rules, Prometheus' own `up`.
type Names = BTreeMap<String, BTreeSet<String>>;

/// The labels an expression's result carries (`None`: a scalar), checking on the way
/// that every metric and label it names exists.
fn labels_of(e: &Expr, names: &Names) -> Result<Option<BTreeSet<String>>, String> {
    let vector = |e: &Expr| -> Result<BTreeSet<String>, String> {
        labels_of(e, names)?.ok_or_else(|| "a scalar where a vector is needed".to_string())
    };
    let subset = |want: &[String], have: &BTreeSet<String>, what: &str| match want
        .iter()
        .find(|l| !have.contains(*l))
    {
        Some(l) => Err(format!("{what} names label {l:?}, not among {have:?}")),
        None => Ok(()),
    };
    Ok(match e {
        Expr::VectorSelector(vs) => Some(selector(vs, names)?),
        Expr::MatrixSelector(ms) => Some(selector(&ms.vs, names)?),
        Expr::Paren(p) => labels_of(&p.expr, names)?,
        Expr::Unary(u) => labels_of(&u.expr, names)?,
        Expr::Subquery(s) => labels_of(&s.expr, names)?,
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => None,
        Expr::Aggregate(a) => {
            let inner = vector(&a.expr)?;
            Some(match &a.modifier {
                Some(LabelModifier::Include(l)) => {
                    subset(&l.labels, &inner, "by")?;
                    l.labels.iter().cloned().collect()
                }
                Some(LabelModifier::Exclude(l)) => {
                    subset(&l.labels, &inner, "without")?;
                    inner
                        .into_iter()
                        .filter(|x| !l.labels.contains(x))
                        .collect()
                }
                None => BTreeSet::new(),
            })
        }
        Expr::Binary(b) => {
            let (lhs, rhs) = (labels_of(&b.lhs, names)?, labels_of(&b.rhs, names)?);
            if let (Some(m), Some(l), Some(r)) = (&b.modifier, &lhs, &rhs) {
                if let Some(LabelModifier::Include(on)) = &m.matching {
                    subset(&on.labels, l, "on")?;
                    subset(&on.labels, r, "on")?;
                }
                if let Some(extra) = m.card.labels() {
                    subset(&extra.labels, r, "group_left")?;
                }
            }
            lhs.or(rhs)
        }
        Expr::Call(c) => {
            // Every argument is checked, even those whose labels do not carry over.
            let args = c
                .args
                .args
                .iter()
                .map(|a| labels_of(a, names))
                .collect::<Result<Vec<_>, _>>()?;
            match c.func.name {
                "scalar" | "time" | "vector" => None,
                "histogram_quantile" => {
                    let mut l = args[1].clone().ok_or("histogram_quantile of a scalar")?;
                    subset(&["le".to_string()], &l, "histogram_quantile")?;
                    l.remove("le");
                    Some(l)
                }
                _ => args.into_iter().flatten().next(),
            }
        }
    })
}

/// The labels of the series a selector picks; its name and matchers must exist.
fn selector(
    vs: &promql_parser::parser::VectorSelector,
    names: &Names,
) -> Result<BTreeSet<String>, String> {
    let name = vs.name.clone().unwrap_or_default();
    let labels = names
        .get(&name)
        .ok_or_else(|| format!("metric {name:?} is not exported"))?;
    for m in &vs.matchers.matchers {
        if m.name != "__name__" && !labels.contains(&m.name) {
            return Err(format!("{name}{{{}}}: label not exported", m.name));
        }
    }
    Ok(labels.clone())
}

/// `$labels.x` references in an annotation template.
fn template_labels(text: &str) -> Vec<String> {
    text.split("$labels.")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

/// Check every rule (in order, so a recording rule is known to the ones after it) and
/// every panel against `names`; the problems found.
fn problems(mut names: Names) -> Vec<String> {
    let mut found = Vec::new();
    for (name, alert, q) in rules() {
        match parser::parse(&q.expr)
            .map_err(|e| format!("does not parse: {e}"))
            .and_then(|e| labels_of(&e, &names))
        {
            Ok(labels) => {
                let labels = labels.unwrap_or_default();
                for a in &q.annotations {
                    for l in template_labels(a) {
                        if !labels.contains(&l) {
                            found.push(format!(
                                "{}: annotation uses $labels.{l}, not in {labels:?}",
                                q.origin
                            ));
                        }
                    }
                }
                if !alert {
                    names.insert(name, labels);
                }
            }
            Err(e) => found.push(format!("{}: {e}", q.origin)),
        }
    }
    for q in panel_queries() {
        let checked = parser::parse(&q.expr).and_then(|e| labels_of(&e, &names));
        if let Err(e) = checked {
            found.push(format!("{}: {e} (in {})", q.origin, q.expr));
        }
    }
    found
}

#[test]
fn the_checker_catches_a_metric_or_label_that_is_not_exported() {
    let names: Names = BTreeMap::from([(
        "extip_ips_held".to_string(),
        BTreeSet::from(["kind".to_string(), "job".into(), "instance".into()]),
    )]);
    let check = |q: &str| labels_of(&parser::parse(q).expect("parses"), &names);
    assert!(check("sum by (kind) (extip_ips_held)").is_ok());
    assert!(
        check("sum by (ip) (extip_ips_held)").is_err(),
        "unknown label in by"
    );
    assert!(
        check("extip_ips_held{node=\"a\"}").is_err(),
        "unknown matcher label"
    );
    assert!(
        check("rate(extip_ip_held_total[5m])").is_err(),
        "unknown metric"
    );
    let under_scalar = "extip_ips_held > scalar(max(extip_ips))";
    assert!(
        check(under_scalar).is_err(),
        "unknown metric under scalar()"
    );
    assert_eq!(
        template_labels("{{ $labels.ip }} on {{ $labels.instance }}"),
        vec!["ip", "instance"]
    );
}

#[test]
fn rules_and_panels_name_only_what_a_live_agent_and_extip_sync_export() {
    let s = SyncLab::new(1, true);
    s.lab.put("/extip/ips/198.51.100.10", "{}");
    let replica = s.sync("s1", &[]);
    wait_leader(&s);
    s.api.apply(&service("lb", "  type: LoadBalancer\n"));
    let held = wait_for(Duration::from_secs(15), || {
        s.lab.holders("198.51.100.10") == vec![0] && !s.ingress("lb").is_empty()
    });
    assert!(
        held.is_some(),
        "the VIP was not held or the Service got no IP"
    );
    let agent = s.lab.exec(
        0,
        &["curl", "-s", "-m", "5", "http://127.0.0.1:9478/metrics"],
    );
    let sync = replica.http("/metrics").1;
    let mut names = exported(&agent);
    names.extend(exported(&sync));
    assert!(
        names.contains_key("extip_ip_held"),
        "no per-IP series:\n{agent}"
    );
    assert!(
        names.contains_key("extip_sync_services"),
        "no sync metrics:\n{sync}"
    );
    names.insert("up".into(), TARGET_LABELS.map(String::from).into());
    let found = problems(names);
    assert!(
        found.is_empty(),
        "names that nothing exports:\n{}",
        found.join("\n")
    );
}
