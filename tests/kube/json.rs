//! JSON work of the stand-in: patches (RFC 7386 merge, and the strategic merge kubectl
//! sends), field and label selectors, and the server-side tables `kubectl get` prints.

use serde_json::{json, Map, Value};

use super::crd::{age_text, cells as custom_cells, columns as custom_columns, custom_kind};
use super::store::{age_secs, Resource};

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    for (k, v) in fields {
        if v.is_null() {
            target.as_object_mut().map(|t| t.remove(k));
        } else {
            merge_patch(&mut target[k.as_str()], v);
        }
    }
}

/// The merge key of a list field in a Service or Event (`patchMergeKey` in the API).
fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "ports" => Some("port"),
        "ingress" => Some("ip"),
        "conditions" => Some("type"),
        _ => None,
    }
}

/// Strategic merge patch as kubectl computes it for built-in types: maps merge,
/// lists with a merge key merge by it, other lists are replaced; the `$patch`,
/// `$setElementOrder/…`, `$retainKeys` and `$deleteFromPrimitiveList/…` directives work.
pub fn strategic_merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(fields) = patch else {
        *target = patch.clone();
        return;
    };
    if fields.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut clean = patch.clone();
        clean.as_object_mut().map(|m| m.remove("$patch"));
        *target = clean;
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    for (k, v) in fields {
        if let Some(list) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(items), Some(gone)) = (target[list].as_array_mut(), v.as_array()) {
                items.retain(|i| !gone.contains(i));
            }
        } else if k.starts_with('$') {
            continue;
        } else if v.is_null() {
            target.as_object_mut().map(|t| t.remove(k));
        } else if let (Some(key), Some(items)) = (merge_key(k), v.as_array()) {
            merge_list(&mut target[k.as_str()], items, key);
        } else {
            strategic_merge_patch(&mut target[k.as_str()], v);
        }
    }
}

fn merge_list(target: &mut Value, items: &[Value], key: &str) {
    if !target.is_array() {
        *target = json!([]);
    }
    let list = target.as_array_mut().expect("array");
    for item in items {
        let pos = list.iter().position(|e| e[key] == item[key]);
        let delete = item["$patch"].as_str() == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                list.remove(i);
            }
            (Some(i), false) => strategic_merge_patch(&mut list[i], item),
            (None, false) => list.push(item.clone()),
            (None, true) => {}
        }
    }
}

/// One `a.b=c` / `a.b!=c` term of a field or label selector.
struct Term {
    path: String,
    value: Option<String>,
    negate: bool,
}

fn terms(selector: &str) -> Vec<Term> {
    selector
        .split(',')
        .filter(|t| !t.trim().is_empty())
        .map(|t| {
            if let Some((p, v)) = t.split_once("!=") {
                Term {
                    path: p.trim().into(),
                    value: Some(v.trim().into()),
                    negate: true,
                }
            } else if let Some((p, v)) = t.split_once('=') {
                let v = v.strip_prefix('=').unwrap_or(v);
                Term {
                    path: p.trim().into(),
                    value: Some(v.trim().into()),
                    negate: false,
                }
            } else if let Some(p) = t.trim().strip_prefix('!') {
                Term {
                    path: p.into(),
                    value: None,
                    negate: true,
                }
            } else {
                Term {
                    path: t.trim().into(),
                    value: None,
                    negate: false,
                }
            }
        })
        .collect()
}

/// Whether `obj` matches a field selector such as `metadata.name=web,involvedObject.kind=Service`.
pub fn field_selector_matches(obj: &Value, selector: &str) -> bool {
    terms(selector).iter().all(|t| {
        let found = t
            .path
            .split('.')
            .try_fold(obj, |v, part| v.get(part))
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
            .unwrap_or_default();
        (Some(found.as_str()) == t.value.as_deref()) != t.negate
    })
}

/// Whether `obj`'s labels match an equality-based label selector.
pub fn label_selector_matches(obj: &Value, selector: &str) -> bool {
    let labels = &obj["metadata"]["labels"];
    terms(selector).iter().all(|t| {
        let found = labels.get(&t.path).and_then(Value::as_str);
        let hit = match &t.value {
            Some(want) => found == Some(want.as_str()),
            None => found.is_some(),
        };
        hit != t.negate
    })
}

/// A `meta.k8s.io/v1` Table of `objects`, as `kubectl get` asks for it.
pub fn table(resource: Resource, objects: &[Value], rv: u64, full_object: bool) -> Value {
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let object = if full_object {
                o.clone()
            } else {
                json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]})
            };
            json!({"cells": cells(resource, o), "object": object})
        })
        .collect();
    json!({
        "kind": "Table", "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv.to_string()},
        "columnDefinitions": columns(resource),
        "rows": rows,
    })
}

fn columns(resource: Resource) -> Value {
    let names: &[&str] = match resource {
        Resource::Custom(i) => return Value::from(custom_columns(custom_kind(i))),
        Resource::Crds => &["Name", "Created At"],
        Resource::Services => &[
            "Name",
            "Type",
            "Cluster-IP",
            "External-IP",
            "Port(s)",
            "Age",
        ],
        Resource::Events => &["Last Seen", "Type", "Reason", "Object", "Message"],
        Resource::EndpointSlices => &["Name", "AddressType", "Ports", "Endpoints", "Age"],
    };
    names
        .iter()
        .map(|n| {
            let format = if *n == "Name" { "name" } else { "" };
            json!({"name": n, "type": "string", "format": format, "description": "", "priority": 0})
        })
        .collect()
}

fn cells(resource: Resource, o: &Value) -> Vec<Value> {
    let text = |v: &Value| v.as_str().unwrap_or("<none>").to_string();
    match resource {
        Resource::Custom(i) => custom_cells(custom_kind(i), o),
        Resource::Crds => vec![
            o["metadata"]["name"].clone(),
            o["metadata"]["creationTimestamp"].clone(),
        ],
        Resource::Services => vec![
            o["metadata"]["name"].clone(),
            json!(text(&o["spec"]["type"])),
            json!(text(&o["spec"]["clusterIP"])),
            json!(external_ip_cell(o)),
            json!(ports_cell(o)),
            json!(age(&o["metadata"]["creationTimestamp"])),
        ],
        Resource::Events => vec![
            json!(age(&o["lastTimestamp"])),
            json!(text(&o["type"])),
            json!(text(&o["reason"])),
            json!(format!(
                "{}/{}",
                o["involvedObject"]["kind"]
                    .as_str()
                    .unwrap_or("")
                    .to_lowercase(),
                o["involvedObject"]["name"].as_str().unwrap_or("")
            )),
            json!(text(&o["message"])),
        ],
        Resource::EndpointSlices => vec![
            o["metadata"]["name"].clone(),
            json!(text(&o["addressType"])),
            json!(list_cell(&o["ports"], "port")),
            json!(list_cell(&o["endpoints"], "addresses")),
            json!(age(&o["metadata"]["creationTimestamp"])),
        ],
    }
}

/// `field` of each item of `list`, comma-separated (arrays flattened), `<unset>` if none.
fn list_cell(list: &Value, field: &str) -> String {
    let parts: Vec<String> = list
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|item| match &item[field] {
            Value::Array(values) => values.iter().map(ToString::to_string).collect(),
            Value::Null => Vec::new(),
            v => vec![v.to_string()],
        })
        .map(|t| t.trim_matches('"').to_string())
        .collect();
    if parts.is_empty() {
        "<unset>".into()
    } else {
        parts.join(",")
    }
}

/// The EXTERNAL-IP column as kubectl shows it: ingress IPs, `<pending>` for a
/// LoadBalancer without one, then `spec.externalIPs`.
fn external_ip_cell(o: &Value) -> String {
    let mut ips: Vec<String> = Vec::new();
    let is_lb = o["spec"]["type"] == "LoadBalancer";
    for i in o["status"]["loadBalancer"]["ingress"]
        .as_array()
        .into_iter()
        .flatten()
    {
        ips.extend(i["ip"].as_str().map(str::to_string));
    }
    if is_lb && ips.is_empty() {
        ips.push("<pending>".into());
    }
    for ip in o["spec"]["externalIPs"].as_array().into_iter().flatten() {
        ips.extend(ip.as_str().map(str::to_string));
    }
    if ips.is_empty() {
        "<none>".into()
    } else {
        ips.join(",")
    }
}

fn ports_cell(o: &Value) -> String {
    let ports: Vec<String> = o["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| format!("{}/{}", p["port"], p["protocol"].as_str().unwrap_or("TCP")))
        .collect();
    if ports.is_empty() {
        "<none>".into()
    } else {
        ports.join(",")
    }
}

fn age(timestamp: &Value) -> String {
    age_text(timestamp.as_str().map_or(0, age_secs))
}
