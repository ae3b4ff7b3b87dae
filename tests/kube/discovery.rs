//! The stand-in's discovery and OpenAPI v3 documents: the built-in groups, plus
//! apiextensions.k8s.io and every group a CRD in the store defines.

use serde_json::{json, Value};

use super::crd::{custom_kind, find_kind, CustomKind};
use super::store::{Resource, Store};

/// The kinds the CRDs in `store` define.
fn defined(store: &Store) -> Vec<&'static CustomKind> {
    store
        .list(Resource::Crds, None)
        .iter()
        .filter_map(|crd| {
            let group = crd["spec"]["group"].as_str()?;
            let plural = crd["spec"]["names"]["plural"].as_str()?;
            find_kind(group, plural).map(custom_kind)
        })
        .collect()
}

/// An APIGroup entry for `group` served at `version`.
fn group_doc(group: &str, version: &str) -> Value {
    let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
    json!({"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": [gv], "preferredVersion": gv})
}

/// The APIResourceList of a CRD's group and version.
fn custom_resources(kind: &CustomKind) -> Value {
    let verbs = json!(["create", "delete", "get", "list", "patch", "update", "watch"]);
    let mut resources = vec![json!({
        "name": kind.plural, "singularName": kind.singular, "namespaced": kind.namespaced,
        "kind": kind.kind, "verbs": verbs, "shortNames": kind.short_names,
    })];
    if kind.status {
        resources.push(
            json!({"name": format!("{}/status", kind.plural), "singularName": "",
            "namespaced": kind.namespaced, "kind": kind.kind, "verbs": ["get", "patch", "update"]}),
        );
    }
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": kind.api_version, "resources": resources})
}

/// The OpenAPI v3 document of one group and version: the PATCH of `kind` that takes
/// `fieldValidation`, so kubectl validates on the server.
fn openapi_group(group: &str, version: &str, kind: &str) -> Value {
    json!({
        "openapi": "3.0.0",
        "info": {"title": "extip stand-in", "version": "v1.32.0"},
        "paths": {format!("/apis/{group}/{version}/{kind}/{{name}}"): patch_op(group, version, kind)},
        "components": {"schemas": {}},
    })
}

/// Discovery and OpenAPI documents, by path.
pub fn discovery(path: &str, store: &Store) -> Option<Value> {
    let path = path.trim_end_matches('/');
    let kinds = defined(store);
    for kind in &kinds {
        let g = &kind.group;
        if path == format!("/apis/{g}") {
            return Some(group_doc(g, &kind.version));
        }
        if path == format!("/apis/{}", kind.api_version) {
            return Some(custom_resources(kind));
        }
        if path == format!("/openapi/v3/apis/{}", kind.api_version) {
            return Some(openapi_group(g, &kind.version, &kind.kind));
        }
    }
    match path {
        "/apis" => {
            let mut groups = vec![
                group_doc("discovery.k8s.io", "v1"),
                group_doc("apiextensions.k8s.io", "v1"),
            ];
            groups.extend(kinds.iter().map(|k| group_doc(&k.group, &k.version)));
            for g in &mut groups {
                g.as_object_mut().map(|o| {
                    o.remove("kind");
                    o.remove("apiVersion")
                });
            }
            Some(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
        }
        "/openapi/v3" => {
            let mut paths = serde_json::Map::new();
            let groups = [
                "api/v1",
                "apis/discovery.k8s.io/v1",
                "apis/apiextensions.k8s.io/v1",
            ];
            let custom = kinds.iter().map(|k| format!("apis/{}", k.api_version));
            for p in groups.iter().map(|g| g.to_string()).chain(custom) {
                let url = format!("/openapi/v3/{p}?hash=extip-stand-in");
                paths.insert(p, json!({"serverRelativeURL": url}));
            }
            Some(json!({"paths": paths}))
        }
        _ => builtin(path),
    }
}

/// The documents of the built-in groups.
fn builtin(path: &str) -> Option<Value> {
    let verbs = json!(["create", "delete", "get", "list", "patch", "update", "watch"]);
    Some(match path {
        "/version" => {
            json!({"major": "1", "minor": "32", "gitVersion": "v1.32.0-extip-stand-in", "platform": "linux/amd64"})
        }
        "/api" => {
            json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
        }
        "/apis/discovery.k8s.io" => json!({
            "kind": "APIGroup", "apiVersion": "v1", "name": "discovery.k8s.io",
            "versions": [{"groupVersion": "discovery.k8s.io/v1", "version": "v1"}],
            "preferredVersion": {"groupVersion": "discovery.k8s.io/v1", "version": "v1"},
        }),
        "/apis/discovery.k8s.io/v1" => json!({
            "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "discovery.k8s.io/v1",
            "resources": [
                {"name": "endpointslices", "singularName": "endpointslice", "namespaced": true, "kind": "EndpointSlice", "verbs": verbs},
            ],
        }),
        "/api/v1" => json!({
            "kind": "APIResourceList", "groupVersion": "v1",
            "resources": [
                {"name": "services", "singularName": "service", "namespaced": true, "kind": "Service", "verbs": verbs, "shortNames": ["svc"], "categories": ["all"]},
                {"name": "services/status", "singularName": "", "namespaced": true, "kind": "Service", "verbs": ["get", "patch", "update"]},
                {"name": "events", "singularName": "event", "namespaced": true, "kind": "Event", "verbs": verbs, "shortNames": ["ev"]},
            ],
        }),
        "/openapi/v3/api/v1" => openapi_v1(),
        "/openapi/v3/apis/discovery.k8s.io/v1" => openapi_discovery_v1(),
        "/apis/apiextensions.k8s.io" => group_doc("apiextensions.k8s.io", "v1"),
        "/apis/apiextensions.k8s.io/v1" => json!({
            "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "apiextensions.k8s.io/v1",
            "resources": [
                {"name": "customresourcedefinitions", "singularName": "customresourcedefinition", "namespaced": false, "kind": "CustomResourceDefinition", "verbs": verbs, "shortNames": ["crd", "crds"]},
                {"name": "customresourcedefinitions/status", "singularName": "", "namespaced": false, "kind": "CustomResourceDefinition", "verbs": ["get", "patch", "update"]},
            ],
        }),
        "/openapi/v3/apis/apiextensions.k8s.io/v1" => {
            openapi_group("apiextensions.k8s.io", "v1", "CustomResourceDefinition")
        }
        _ => return None,
    })
}

/// A PATCH operation on `kind` of `group` that takes `fieldValidation`.
fn patch_op(group: &str, version: &str, kind: &str) -> Value {
    json!({
        "patch": {
            "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": kind},
            "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}],
            "responses": {"200": {"description": "OK"}},
        }
    })
}

/// The OpenAPI v3 document of discovery.k8s.io/v1, as [`openapi_v1`] is of core/v1.
fn openapi_discovery_v1() -> Value {
    json!({
        "openapi": "3.0.0",
        "info": {"title": "extip stand-in", "version": "v1.32.0"},
        "paths": {
            "/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices/{name}": patch_op("discovery.k8s.io", "v1", "EndpointSlice"),
        },
        "components": {"schemas": {}},
    })
}

/// Just enough OpenAPI v3 for kubectl to see that PATCH of a Service takes the
/// `fieldValidation` query parameter, so it validates on the server, not locally.
fn openapi_v1() -> Value {
    let op = |kind: &str| patch_op("", "v1", kind);
    json!({
        "openapi": "3.0.0",
        "info": {"title": "extip stand-in", "version": "v1.32.0"},
        "paths": {
            "/api/v1/namespaces/{namespace}/services/{name}": op("Service"),
            "/api/v1/namespaces/{namespace}/events/{name}": op("Event"),
        },
        "components": {"schemas": {}},
    })
}
