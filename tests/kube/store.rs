//! The stand-in's object store: one global resourceVersion, an event log for watches
//! that resume from a version, and compaction that makes old versions `410 Gone`.

use std::collections::{BTreeMap, VecDeque};
use std::time::SystemTime;

use serde_json::{json, Value};
use tokio::sync::broadcast;

use super::crd::{admit, custom_kind, define};
use super::json::{merge_patch, strategic_merge_patch};

/// How many past events a watch can resume from before it gets `410 Gone`.
const LOG_LEN: usize = 10_000;

/// A resource the stand-in serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    /// `services`, with a `status` subresource.
    Services,
    /// `events` (core/v1).
    Events,
    /// `endpointslices` (discovery.k8s.io/v1).
    EndpointSlices,
    /// `customresourcedefinitions` (apiextensions.k8s.io/v1, cluster-scoped).
    Crds,
    /// Objects of a kind a CRD defined: the index of [`custom_kind`].
    Custom(usize),
}

impl Resource {
    /// From the plural in a URL path.
    pub fn from_plural(plural: &str) -> Option<Self> {
        match plural {
            "services" => Some(Resource::Services),
            "events" => Some(Resource::Events),
            "endpointslices" => Some(Resource::EndpointSlices),
            "customresourcedefinitions" => Some(Resource::Crds),
            _ => None,
        }
    }

    /// The kind of one object.
    pub fn kind(self) -> &'static str {
        match self {
            Resource::Services => "Service",
            Resource::Events => "Event",
            Resource::EndpointSlices => "EndpointSlice",
            Resource::Crds => "CustomResourceDefinition",
            Resource::Custom(i) => &custom_kind(i).kind,
        }
    }

    /// The plural, as in URLs.
    pub fn plural(self) -> &'static str {
        match self {
            Resource::Services => "services",
            Resource::Events => "events",
            Resource::EndpointSlices => "endpointslices",
            Resource::Crds => "customresourcedefinitions",
            Resource::Custom(i) => &custom_kind(i).plural,
        }
    }

    /// Its `apiVersion`: group and version.
    pub fn api_version(self) -> &'static str {
        match self {
            Resource::Services | Resource::Events => "v1",
            Resource::EndpointSlices => "discovery.k8s.io/v1",
            Resource::Crds => "apiextensions.k8s.io/v1",
            Resource::Custom(i) => &custom_kind(i).api_version,
        }
    }

    /// Whether its objects live in namespaces.
    pub fn namespaced(self) -> bool {
        match self {
            Resource::Crds => false,
            Resource::Custom(i) => custom_kind(i).namespaced,
            _ => true,
        }
    }

    /// The kind of a list of them.
    pub fn list_kind(self) -> String {
        match self {
            Resource::Custom(i) => custom_kind(i).list_kind.clone(),
            r => format!("{}List", r.kind()),
        }
    }
}

/// One watch event as it goes on the wire, plus where it belongs.
#[derive(Debug, Clone)]
pub struct Change {
    /// The resourceVersion the change created.
    pub rv: u64,
    /// Which resource.
    pub resource: Resource,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub kind: &'static str,
    /// The object after the change (before it, for `DELETED`).
    pub object: Value,
}

/// What live watches receive.
#[derive(Debug, Clone)]
pub enum Feed {
    /// A change to forward if it matches the watch.
    Change(Change),
    /// History was compacted: every open watch ends with `410 Gone`.
    Expired,
}

/// A Kubernetes-style API error: HTTP code, reason and message.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// `NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, …
    pub reason: &'static str,
    /// Human-readable message.
    pub message: String,
}

impl ApiError {
    fn not_found(resource: Resource, name: &str) -> Self {
        ApiError {
            code: 404,
            reason: "NotFound",
            message: format!("{} \"{name}\" not found", resource.plural()),
        }
    }

    /// `400 BadRequest`.
    pub fn bad_request(message: String) -> Self {
        ApiError {
            code: 400,
            reason: "BadRequest",
            message,
        }
    }

    /// The `Status` object the real API server sends for this error.
    pub fn status(&self) -> Value {
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": self.message,
            "reason": self.reason, "code": self.code,
        })
    }
}

type Key = (Resource, String, String);

/// Every object the stand-in holds.
pub struct Store {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    log: VecDeque<Change>,
    /// A watch from a version below this one is `410 Gone`.
    floor: u64,
    uids: u64,
    feed: broadcast::Sender<Feed>,
}

impl Store {
    /// An empty store.
    pub fn new() -> Self {
        Store {
            rv: 1,
            objects: BTreeMap::new(),
            log: VecDeque::new(),
            floor: 0,
            uids: 0,
            feed: broadcast::channel(65_536).0,
        }
    }

    /// The current resourceVersion.
    pub fn rv(&self) -> u64 {
        self.rv
    }

    /// Live changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Feed> {
        self.feed.subscribe()
    }

    /// Logged changes after `rv`, or `Err` when `rv` is compacted away.
    pub fn changes_since(&self, rv: u64) -> Result<Vec<Change>, ApiError> {
        let oldest = self.log.front().map_or(self.rv, |c| c.rv);
        if rv < self.floor || (rv + 1 < oldest && self.log.len() == LOG_LEN) {
            return Err(ApiError {
                code: 410,
                reason: "Expired",
                message: format!("too old resource version: {rv} ({})", self.floor),
            });
        }
        Ok(self.log.iter().filter(|c| c.rv > rv).cloned().collect())
    }

    /// Forget history up to now and end every open watch with `410 Gone`.
    pub fn compact(&mut self) {
        self.floor = self.rv;
        self.log.clear();
        let _ = self.feed.send(Feed::Expired);
    }

    /// Objects of `resource` in `namespace` (all namespaces for `None`).
    pub fn list(&self, resource: Resource, namespace: Option<&str>) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((r, ns, _), _)| *r == resource && namespace.is_none_or(|n| n == ns))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// One object.
    pub fn get(&self, resource: Resource, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.objects
            .get(&(resource, ns.to_string(), name.to_string()))
            .cloned()
            .ok_or_else(|| ApiError::not_found(resource, name))
    }

    /// Create; fills uid, timestamps, resourceVersion and a Service's defaults.
    pub fn create(
        &mut self,
        resource: Resource,
        ns: &str,
        mut obj: Value,
        strict: bool,
    ) -> Result<Value, ApiError> {
        let name = object_name(&mut obj, &mut self.uids)?;
        match resource {
            Resource::Crds => {
                define(&mut obj)?;
            }
            Resource::Custom(i) => {
                admit(custom_kind(i), &mut obj, strict)?;
                obj["metadata"]["generation"] = json!(1);
                if custom_kind(i).status {
                    // The status subresource: a create cannot set it.
                    obj.as_object_mut().map(|o| o.remove("status"));
                }
            }
            _ => {}
        }
        let key = (resource, ns.to_string(), name.clone());
        if self.objects.contains_key(&key) {
            return Err(ApiError {
                code: 409,
                reason: "AlreadyExists",
                message: format!("{} \"{name}\" already exists", resource.plural()),
            });
        }
        self.uids += 1;
        let meta = &mut obj["metadata"];
        if resource.namespaced() {
            meta["namespace"] = json!(ns);
        }
        meta["uid"] = json!(format!("00000000-0000-4000-8000-{:012x}", self.uids));
        meta["creationTimestamp"] = json!(now_rfc3339());
        obj["kind"] = json!(resource.kind());
        obj["apiVersion"] = json!(resource.api_version());
        if resource == Resource::Services {
            service_defaults(&mut obj);
        }
        Ok(self.commit(key, "ADDED", obj))
    }

    /// Replace the object (`status == false`) or only its status (`status == true`),
    /// refusing unknown fields of a custom object when `strict`.
    pub fn replace(
        &mut self,
        resource: Resource,
        ns: &str,
        name: &str,
        new: Value,
        status: bool,
        strict: bool,
    ) -> Result<Value, ApiError> {
        let old = self.get(resource, ns, name)?;
        let wanted = new["metadata"]["resourceVersion"].as_str().unwrap_or("");
        if !wanted.is_empty() && wanted != old["metadata"]["resourceVersion"] {
            return Err(ApiError {
                code: 409,
                reason: "Conflict",
                message: format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                    resource.plural()
                ),
            });
        }
        let merged = if status {
            let mut o = old.clone();
            o["status"] = new["status"].clone();
            o
        } else {
            let mut o = new;
            o["status"] = old["status"].clone();
            for field in ["uid", "creationTimestamp", "namespace", "name"] {
                o["metadata"][field] = old["metadata"][field].clone();
            }
            o["kind"] = old["kind"].clone();
            o["apiVersion"] = old["apiVersion"].clone();
            o
        };
        let merged = admitted(resource, &old, merged, status, strict)?;
        if merged == old {
            return Ok(old);
        }
        let key = (resource, ns.to_string(), name.to_string());
        Ok(self.commit(key, "MODIFIED", merged))
    }

    /// Apply a merge or strategic-merge patch, to the object or only its status.
    // The request's parts, as the HTTP side has them; a struct would only rename them.
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &mut self,
        resource: Resource,
        ns: &str,
        name: &str,
        content_type: &str,
        patch: &Value,
        status: bool,
        strict: bool,
    ) -> Result<Value, ApiError> {
        let old = self.get(resource, ns, name)?;
        let mut new = old.clone();
        if content_type.starts_with("application/merge-patch+json") {
            merge_patch(&mut new, patch);
        } else if content_type.starts_with("application/strategic-merge-patch+json") {
            strategic_merge_patch(&mut new, patch);
        } else {
            return Err(ApiError {
                code: 415,
                reason: "UnsupportedMediaType",
                message: format!("the stand-in API server does not take {content_type} patches"),
            });
        }
        new["metadata"]["resourceVersion"] = Value::Null;
        self.replace(resource, ns, name, new, status, strict)
    }

    /// Delete; returns the object as it was.
    pub fn delete(&mut self, resource: Resource, ns: &str, name: &str) -> Result<Value, ApiError> {
        let key = (resource, ns.to_string(), name.to_string());
        let obj = self
            .objects
            .remove(&key)
            .ok_or_else(|| ApiError::not_found(resource, name))?;
        if resource == Resource::Crds {
            // Deleting a CRD deletes its objects, as on the real server.
            let spec = &obj["spec"];
            let group = spec["group"].as_str().unwrap_or("");
            let plural = spec["names"]["plural"].as_str().unwrap_or("");
            if let Some(i) = super::crd::find_kind(group, plural) {
                let gone: Vec<Key> = self
                    .objects
                    .keys()
                    .filter(|k| k.0 == Resource::Custom(i))
                    .cloned()
                    .collect();
                for (r, ns, n) in gone {
                    self.delete(r, &ns, &n)?;
                }
            }
        }
        self.rv += 1;
        let mut gone = obj.clone();
        gone["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.publish(Change {
            rv: self.rv,
            resource,
            kind: "DELETED",
            object: gone,
        });
        Ok(obj)
    }

    fn commit(&mut self, key: Key, kind: &'static str, mut obj: Value) -> Value {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.objects.insert(key.clone(), obj.clone());
        self.publish(Change {
            rv: self.rv,
            resource: key.0,
            kind,
            object: obj.clone(),
        });
        obj
    }

    fn publish(&mut self, change: Change) {
        if self.log.len() == LOG_LEN {
            self.log.pop_front();
        }
        self.log.push_back(change.clone());
        let _ = self.feed.send(Feed::Change(change));
    }
}

/// A custom object's new version checked against its schema, with `generation`
/// bumped when its spec changed (as the real server does for the main resource).
fn admitted(
    resource: Resource,
    old: &Value,
    mut new: Value,
    status: bool,
    strict: bool,
) -> Result<Value, ApiError> {
    match resource {
        Resource::Crds if !status => {
            define(&mut new)?;
        }
        Resource::Custom(i) => {
            let kind = custom_kind(i);
            admit(kind, &mut new, strict)?;
            if kind.status && !status {
                new["status"] = old["status"].clone();
            }
            let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
            let bumped = generation + i64::from(new["spec"] != old["spec"]);
            new["metadata"]["generation"] = json!(bumped);
        }
        _ => {}
    }
    Ok(new)
}

fn object_name(obj: &mut Value, uids: &mut u64) -> Result<String, ApiError> {
    if let Some(name) = obj["metadata"]["name"].as_str().filter(|n| !n.is_empty()) {
        return Ok(name.to_string());
    }
    if let Some(base) = obj["metadata"]["generateName"].as_str() {
        *uids += 1;
        let name = format!("{base}{:05x}", *uids);
        obj["metadata"]["name"] = json!(name);
        return Ok(name);
    }
    Err(ApiError {
        code: 422,
        reason: "Invalid",
        message: "metadata.name: Required value: name or generateName is required".into(),
    })
}

fn service_defaults(obj: &mut Value) {
    if obj["spec"]["type"].is_null() {
        obj["spec"]["type"] = json!("ClusterIP");
    }
    if obj["status"].is_null() {
        obj["status"] = json!({"loadBalancer": {}});
    }
    // As a dual-stack cluster with IPv4 first defaults them.
    let spec = &mut obj["spec"];
    if spec["ipFamilyPolicy"].is_null() {
        spec["ipFamilyPolicy"] = json!("SingleStack");
    }
    if spec["ipFamilies"].is_null() {
        spec["ipFamilies"] = match spec["ipFamilyPolicy"].as_str() {
            Some("SingleStack") => json!(["IPv4"]),
            _ => json!(["IPv4", "IPv6"]),
        };
    }
}

/// Now as RFC 3339 UTC, the way Kubernetes writes timestamps.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Seconds since `text` (RFC 3339), 0 when it does not parse.
pub fn age_secs(text: &str) -> u64 {
    humantime::parse_rfc3339(text)
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .map_or(0, |d| d.as_secs())
}
