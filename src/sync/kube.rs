//! extip-sync's Kubernetes side: what a Service asks for, its load-balancer status,
//! and Events that tell the Service's owner why an IP was refused.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Service};
use k8s_openapi::api::discovery::v1::{EndpointConditions, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;

use super::family::{Family, Stack};
use super::plan::{
    ServiceView, ANNOTATION_INTERFACE, ANNOTATION_IP, ANNOTATION_POOL, ANNOTATION_REPLICAS,
};
use super::sharing::ANNOTATION_SHARING_KEY;

/// `namespace/name` of an object.
fn namespaced_name(meta: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or_default()
    )
}

/// `namespace/name` of a Service.
pub fn service_name(svc: &Service) -> String {
    namespaced_name(&svc.metadata)
}

/// Label an EndpointSlice carries naming its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What extip-sync keeps of one EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceNodes {
    /// `namespace/name` of the Service it belongs to.
    pub service: String,
    /// Nodes of its ready endpoints (`conditions.ready` true or unset, as the API says).
    pub ready: BTreeSet<String>,
    /// Nodes of its endpoints that are terminating but still serving (KEP-1669:
    /// `terminating` and `serving` true; `serving` unset reads as `ready`).
    pub terminating: BTreeSet<String>,
}

/// The EndpointSlices the sync watches, by `namespace/name` of the slice.
pub type SliceMap = BTreeMap<String, SliceNodes>;

/// `namespace/name` of an EndpointSlice.
pub fn slice_name(slice: &EndpointSlice) -> String {
    namespaced_name(&slice.metadata)
}

/// The Service and ready nodes of `slice`; `None` for a slice of no Service.
pub fn slice_nodes(slice: &EndpointSlice) -> Option<SliceNodes> {
    let labels = slice.metadata.labels.as_ref()?;
    let service = labels.get(SERVICE_NAME_LABEL)?;
    let ns = slice.metadata.namespace.as_deref().unwrap_or("default");
    let nodes_where = |keep: fn(&EndpointConditions) -> bool| -> BTreeSet<String> {
        slice
            .endpoints
            .iter()
            .filter(|e| {
                keep(
                    e.conditions
                        .as_ref()
                        .unwrap_or(&EndpointConditions::default()),
                )
            })
            .filter_map(|e| e.node_name.clone())
            .collect()
    };
    Some(SliceNodes {
        service: format!("{ns}/{service}"),
        ready: nodes_where(|c| c.ready != Some(false)),
        terminating: nodes_where(|c| {
            c.terminating == Some(true) && c.serving.or(c.ready) == Some(true)
        }),
    })
}

/// The nodes of one Service's endpoints, over all its slices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointNodes {
    /// Nodes with a ready endpoint.
    pub ready: BTreeSet<String>,
    /// Nodes with an endpoint that is terminating but still serving.
    pub terminating: BTreeSet<String>,
}

/// Endpoint nodes per Service, over all its slices.
pub fn endpoint_nodes(slices: &SliceMap) -> BTreeMap<String, EndpointNodes> {
    let mut out: BTreeMap<String, EndpointNodes> = BTreeMap::new();
    for s in slices.values() {
        let nodes = out.entry(s.service.clone()).or_default();
        nodes.ready.extend(s.ready.iter().cloned());
        nodes.terminating.extend(s.terminating.iter().cloned());
    }
    out
}

/// Whether `svc` is `type: LoadBalancer`.
pub fn is_load_balancer(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
}

/// What the sync needs of a Service; `endpoints` gives its endpoints' nodes.
pub fn view_of(svc: &Service, endpoints: &BTreeMap<String, EndpointNodes>) -> ServiceView {
    let spec = svc.spec.clone().unwrap_or_default();
    let annotation = |key: &str| {
        svc.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let name = service_name(svc);
    let nodes = endpoints.get(&name).cloned().unwrap_or_default();
    ServiceView {
        ready_nodes: nodes.ready,
        terminating_nodes: nodes.terminating,
        local_traffic: spec.external_traffic_policy.as_deref() == Some("Local"),
        sharing_key: annotation(ANNOTATION_SHARING_KEY),
        stack: Stack::parse(spec.ip_family_policy.as_deref()),
        families: spec
            .ip_families
            .iter()
            .flatten()
            .filter_map(|f| Family::parse(f))
            .collect(),
        family: None,
        secondary: false,
        ports: spec
            .ports
            .iter()
            .flatten()
            .map(|p| (p.protocol.clone().unwrap_or_else(|| "TCP".into()), p.port))
            .collect(),
        name,
        load_balancer: is_load_balancer(svc),
        external_ips: spec.external_ips.unwrap_or_default(),
        requested_ip: annotation(ANNOTATION_IP)
            .or_else(|| spec.load_balancer_ip.filter(|ip| !ip.is_empty())),
        pool: annotation(ANNOTATION_POOL),
        replicas: annotation(ANNOTATION_REPLICAS),
        interface: annotation(ANNOTATION_INTERFACE),
    }
}

/// Whether extip-sync serves `svc`: its `spec.loadBalancerClass` is `class` (both none
/// by default). A Service of another class belongs to another controller: extip-sync
/// neither allocates for it, nor writes its IPs, nor patches its status.
pub fn of_class(svc: &Service, class: Option<&str>) -> bool {
    let own = svc
        .spec
        .as_ref()
        .and_then(|spec| spec.load_balancer_class.as_deref());
    own == class
}

/// The IPs in `status.loadBalancer.ingress`.
pub fn ingress_ips(svc: &Service) -> Vec<String> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|i| i.iter().filter_map(|e| e.ip.clone()).collect())
        .unwrap_or_default()
}

/// Set `status.loadBalancer.ingress` to `ips` through the status subresource.
pub async fn set_ingress(client: &Client, svc: &Service, ips: &[IpAddr]) -> kube::Result<()> {
    let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
    let name = svc.metadata.name.as_deref().unwrap_or_default();
    let ingress: Vec<serde_json::Value> = ips
        .iter()
        .map(|ip| serde_json::json!({"ip": ip.to_string(), "ipMode": "VIP"}))
        .collect();
    let patch = serde_json::json!({"status": {"loadBalancer": {"ingress": ingress}}});
    Api::<Service>::namespaced(client.clone(), ns)
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
}

/// `type` of an Event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Something worked (an IP was allocated).
    Normal,
    /// Something was refused.
    Warning,
}

/// Post a core/v1 Event on the Service: `kubectl describe svc` and `kubectl get events` show it.
pub async fn post_event(
    client: &Client,
    svc: &Service,
    event: (&str, &str, EventType),
    identity: &str,
) -> kube::Result<()> {
    let involved = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Service".into()),
        name: svc.metadata.name.clone(),
        namespace: svc.metadata.namespace.clone(),
        uid: svc.metadata.uid.clone(),
        resource_version: svc.metadata.resource_version.clone(),
        ..Default::default()
    };
    post_event_on(client, involved, event, identity).await
}

/// Post a core/v1 Event on `involved`, in its namespace (`default` for a cluster-scoped
/// object, where `kubectl describe` looks for it).
pub async fn post_event_on(
    client: &Client,
    involved: ObjectReference,
    (reason, message, kind): (&str, &str, EventType),
    identity: &str,
) -> kube::Result<()> {
    let ns = involved
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let now = Time(k8s_openapi::chrono::Utc::now());
    let name = involved.name.clone().unwrap_or_default();
    let event = Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}.")),
            namespace: Some(ns.clone()),
            ..Default::default()
        },
        involved_object: involved,
        reason: Some(reason.to_string()),
        message: Some(message.to_string()),
        type_: Some(format!("{kind:?}")),
        count: Some(1),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        source: Some(EventSource {
            component: Some("extip-sync".into()),
            host: None,
        }),
        reporting_component: Some("extip-sync".into()),
        reporting_instance: Some(identity.to_string()),
        ..Default::default()
    };
    Api::<Event>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &event)
        .await
        .map(|_| ())
}

/// The Services the sync watches, keyed by `namespace/name`.
pub type ServiceMap = BTreeMap<String, Service>;

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ServiceSpec;

    fn svc(annotations: &[(&str, &str)], lb_ip: Option<&str>) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("shop".into()),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("LoadBalancer".into()),
                load_balancer_ip: lb_ip.map(str::to_string),
                external_ips: Some(vec!["198.51.100.20".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_annotation_wins_over_load_balancer_ip_and_blanks_count_as_unset() {
        let v = view_of(
            &svc(&[(ANNOTATION_IP, "198.51.100.7")], Some("198.51.100.8")),
            &BTreeMap::new(),
        );
        assert_eq!(v.name, "shop/web");
        assert!(v.load_balancer);
        assert_eq!(v.requested_ip.as_deref(), Some("198.51.100.7"));
        assert_eq!(v.external_ips, vec!["198.51.100.20".to_string()]);
        let v = view_of(
            &svc(&[(ANNOTATION_IP, " ")], Some("198.51.100.8")),
            &BTreeMap::new(),
        );
        assert_eq!(v.requested_ip.as_deref(), Some("198.51.100.8"));
        let v = view_of(
            &svc(
                &[(ANNOTATION_POOL, "lb"), (ANNOTATION_REPLICAS, "2")],
                Some(""),
            ),
            &BTreeMap::new(),
        );
        assert_eq!(
            (v.requested_ip, v.pool.as_deref(), v.replicas.as_deref()),
            (None, Some("lb"), Some("2"))
        );
    }

    #[test]
    fn a_slice_gives_its_service_the_nodes_of_ready_and_of_terminating_serving_endpoints() {
        use k8s_openapi::api::discovery::v1::Endpoint;
        let endpoint = |node: Option<&str>, ready: Option<bool>| Endpoint {
            node_name: node.map(str::to_string),
            conditions: Some(EndpointConditions {
                ready,
                ..Default::default()
            }),
            ..Default::default()
        };
        // Terminating: never ready; serving says whether it still answers.
        let terminating = |node: &str, serving: Option<bool>| Endpoint {
            node_name: Some(node.to_string()),
            conditions: Some(EndpointConditions {
                ready: Some(false),
                serving,
                terminating: Some(true),
            }),
            ..Default::default()
        };
        let mut slice = EndpointSlice {
            metadata: ObjectMeta {
                name: Some("web-x1".into()),
                namespace: Some("shop".into()),
                labels: Some([(SERVICE_NAME_LABEL.to_string(), "web".to_string())].into()),
                ..Default::default()
            },
            endpoints: vec![
                endpoint(Some("k1"), Some(true)),
                endpoint(Some("k2"), Some(false)),
                endpoint(Some("k3"), None),
                endpoint(None, Some(true)),
                terminating("k4", Some(true)),
                terminating("k5", Some(false)),
                terminating("k6", None),
            ],
            ..Default::default()
        };
        let nodes = slice_nodes(&slice).expect("a Service's slice");
        assert_eq!(nodes.service, "shop/web");
        assert_eq!(nodes.ready, ["k1".to_string(), "k3".to_string()].into());
        assert_eq!(nodes.terminating, ["k4".to_string()].into());
        let slices = SliceMap::from([(slice_name(&slice), nodes)]);
        assert_eq!(
            endpoint_nodes(&slices)["shop/web"].ready,
            ["k1".to_string(), "k3".to_string()].into()
        );
        slice.metadata.labels = None;
        assert_eq!(slice_nodes(&slice), None);
    }
}
