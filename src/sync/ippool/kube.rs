//! The Kubernetes side of IpPools (`ippools.extip.io`, cluster-scoped): their watch,
//! their status subresource, and Events on them.

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, ResourceExt};
use serde_json::{json, Value};

use super::plan::IpPoolObject;
use crate::sync::kube::{post_event_on, EventType};

/// API group of the IpPool CRD.
pub const GROUP: &str = "extip.io";
/// Version of the IpPool CRD served.
pub const VERSION: &str = "v1alpha1";

/// The IpPool resource, for dynamic API calls (the CRD is ours, no generated type).
pub fn ip_pool_resource() -> ApiResource {
    ApiResource {
        group: GROUP.into(),
        version: VERSION.into(),
        api_version: format!("{GROUP}/{VERSION}"),
        kind: "IpPool".into(),
        plural: "ippools".into(),
    }
}

/// The IpPool watch, with kube-rs's back-off between failed attempts.
pub fn watch_ip_pools(
    client: &Client,
) -> impl Stream<Item = watcher::Result<watcher::Event<DynamicObject>>> + Unpin {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ip_pool_resource());
    watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed()
}

/// Whether a watch error means the CRD is not installed (or not readable by us), so
/// there are no IpPools to serve rather than a failure to report loudly.
pub fn not_installed(error: &watcher::Error) -> bool {
    matches!(
        error,
        watcher::Error::InitialListFailed(kube::Error::Api(e)) if e.code == 404 || e.code == 403
    )
}

/// The key of an IpPool in the watch cache: its name.
pub fn ip_pool_name(obj: &DynamicObject) -> String {
    obj.name_any()
}

/// An IpPool as the plan reads it.
pub fn ip_pool_object(obj: &DynamicObject) -> IpPoolObject {
    let spec = serde_json::from_value(obj.data["spec"].clone()).map_err(|e| format!("spec: {e}"));
    IpPoolObject {
        name: obj.name_any(),
        uid: obj.metadata.uid.clone(),
        created: obj
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_rfc3339())
            .unwrap_or_default(),
        generation: obj.metadata.generation,
        spec,
        status: obj.data["status"].clone(),
    }
}

/// Write `status` through the status subresource.
pub async fn set_status(client: &Client, name: &str, status: &Value) -> kube::Result<()> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ip_pool_resource());
    let patch = Patch::Merge(json!({"status": status}));
    api.patch_status(name, &PatchParams::default(), &patch)
        .await
        .map(|_| ())
}

/// Post a Warning Event on an IpPool: `kubectl describe ippool` shows it.
pub async fn warn_on(
    client: &Client,
    ippool: &IpPoolObject,
    (reason, message): (&str, &str),
    identity: &str,
) -> kube::Result<()> {
    let involved = ObjectReference {
        api_version: Some(format!("{GROUP}/{VERSION}")),
        kind: Some("IpPool".into()),
        name: Some(ippool.name.clone()),
        uid: ippool.uid.clone(),
        ..Default::default()
    };
    let event = (reason, message, EventType::Warning);
    post_event_on(client, involved, event, identity).await
}
