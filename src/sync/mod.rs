//! extip-sync: Kubernetes Services into `<prefix>/ips/<ip>` keys on the sync's lease.
//!
//! One loop: kube-rs watchers feed a map of Services; whenever it changes (debounced),
//! leadership changes or the resync timer fires, the leader reconciles: allocation
//! steps, desired keys, Service status, Events. Standbys keep their map warm and write
//! nothing.

mod cache;
pub mod config;
mod connector;
mod etcd;
pub mod family;
mod free_ip;
pub mod ippool;
pub mod kube;
mod leader;
pub mod metrics;
pub mod plan;
mod reconcile;
pub mod service;
pub mod sharing;
mod traffic;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ::kube::runtime::watcher::{self, watcher, Event};
use ::kube::runtime::WatchStreamExt;
use ::kube::{Api, Client};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::model::Keys;

use cache::WatchCache;
pub use config::{SyncCli, SyncConfig, SyncSettings};
use connector::{Connector, ETCD_TIMEOUT};
use kube::{of_class, service_name, slice_name, slice_nodes, SliceNodes, SERVICE_NAME_LABEL};
use metrics::SyncMetrics;
use reconcile::Reconciler;

/// Changes arriving within this window cost one reconcile.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// Wait before retrying a reconcile that failed; doubled per failure up to [`RETRY_MAX`].
const RETRY: Duration = Duration::from_secs(1);
/// Longest wait between retries while etcd or the API server is unreachable.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// The client for `--kubeconfig`, else in-cluster, else `$KUBECONFIG` / `~/.kube/config`.
async fn kube_client(path: Option<&std::path::Path>) -> anyhow::Result<Client> {
    use ::kube::config::{Config, KubeConfigOptions, Kubeconfig};
    let config = match path {
        Some(p) => {
            let kc = Kubeconfig::read_from(p)
                .map_err(|e| anyhow::anyhow!("kubeconfig: {}: {e}", p.display()))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?
        }
        None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => Config::incluster()?,
        None => Config::from_kubeconfig(&KubeConfigOptions::default()).await?,
    };
    Ok(Client::try_from(config)?)
}

/// Watch streams of `K`, one per namespace (or one for all), tagged with their index.
fn watch_streams<K>(
    client: &Client,
    namespaces: &[String],
    config: &watcher::Config,
) -> impl Stream<Item = (usize, watcher::Result<Event<K>>)> + Unpin
where
    K: ::kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + 'static,
    K::DynamicType: Default,
{
    let apis: Vec<Api<K>> = if namespaces.is_empty() {
        vec![Api::all(client.clone())]
    } else {
        namespaces
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect()
    };
    let streams = apis.into_iter().enumerate().map(|(i, api)| {
        watcher(api, config.clone())
            .default_backoff()
            .map(move |e| (i, e))
            .boxed()
    });
    futures::stream::select_all(streams)
}

/// Whether `svc` is of the class served (another class is noted at debug level).
fn of_our_class(svc: &Service, class: Option<&str>) -> bool {
    let ours = of_class(svc, class);
    if !ours {
        debug!(service = %service_name(svc), "another loadBalancerClass: left to its controller");
    }
    ours
}

/// Run extip-sync until SIGTERM or SIGINT.
pub async fn run(cfg: SyncConfig) -> anyhow::Result<()> {
    let client = kube_client(cfg.kubeconfig.as_deref()).await?;
    let connector = Connector {
        endpoints: cfg.etcd.clone(),
        auth: cfg.etcd_auth.clone(),
        keys: Keys::new(&cfg.prefix),
    };
    connector.connect().await?;
    info!(identity = %cfg.identity, etcd = ?cfg.etcd, lease_ttl = ?cfg.lease_ttl, election_ttl = ?cfg.election_ttl, "extip-sync starting");
    let (leading_tx, mut leading) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let election = tokio::spawn(leader::run(
        connector.clone(),
        cfg.identity.clone(),
        cfg.election_ttl,
        cfg.assume_leader,
        leading_tx,
        stop_rx,
    ));
    let (pools_tx, mut pools_changed) = tokio::sync::mpsc::channel(1);
    tokio::spawn(etcd::watch_pools(connector.clone(), pools_tx));
    let mut services = watch_streams::<Service>(&client, &cfg.namespaces, &Default::default());
    let by_service = watcher::Config::default().labels(SERVICE_NAME_LABEL);
    let mut slices = watch_streams::<EndpointSlice>(&client, &cfg.namespaces, &by_service);
    let mut cache: WatchCache<Service> = WatchCache::new(&cfg.namespaces);
    let mut endpoints: WatchCache<SliceNodes> = WatchCache::new(&cfg.namespaces);
    let mut ip_pools = ippool::kube::watch_ip_pools(&client);
    let mut ip_pool_cache: WatchCache<ippool::plan::IpPoolObject> = WatchCache::new(&[]);
    let mut ip_pools_missing = false;
    let class = cfg.load_balancer_class.clone();
    let metrics = Arc::new(SyncMetrics::new());
    if let Some(addr) = cfg.listen {
        metrics::serve(addr, metrics.clone())
            .await
            .map_err(|e| anyhow::anyhow!("listen: cannot serve metrics on {addr}: {e}"))?;
    }
    let mut reconciler = Reconciler::new(connector, client, &cfg, metrics.clone());
    let mut resync = tokio::time::interval(cfg.resync);
    let mut due: Option<Instant> = None;
    let mut failures: u32 = 0;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let whole = cache.complete() && endpoints.complete();
        let ready = whole && *leading.borrow();
        if !*leading.borrow() {
            // A standby is ready once it could take over: its view of the cluster is whole.
            metrics.ready.store(whole, Ordering::Relaxed);
        }
        let at = due.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            Some((i, event)) = services.next() => match event {
                Ok(e) => {
                    let listed = matches!(e, Event::InitDone);
                    let ours = |svc: &Service| of_our_class(svc, class.as_deref()).then(|| svc.clone());
                    if cache.apply(i, e, service_name, ours) {
                        metrics.services.set(cache.map.len() as i64);
                        due = due.or(Some(Instant::now() + DEBOUNCE));
                    }
                    if listed {
                        info!(services = cache.map.len(), "Services listed");
                    }
                }
                Err(e) => warn!(error = %e, "Service watch failed; kube-rs retries with back-off"),
            },
            Some((i, event)) = slices.next() => match event {
                Ok(e) => if endpoints.apply(i, e, slice_name, slice_nodes) {
                    due = due.or(Some(Instant::now() + DEBOUNCE));
                },
                Err(e) => warn!(error = %e, "EndpointSlice watch failed; kube-rs retries with back-off"),
            },
            Some(event) = ip_pools.next() => match event {
                Ok(e) => {
                    ip_pools_missing = false;
                    let keep = |o: &_| Some(ippool::kube::ip_pool_object(o));
                    if ip_pool_cache.apply(0, e, ippool::kube::ip_pool_name, keep) {
                        due = due.or(Some(Instant::now() + DEBOUNCE));
                    }
                }
                Err(e) if ippool::kube::not_installed(&e) => {
                    if !std::mem::replace(&mut ip_pools_missing, true) {
                        info!(error = %e, "no IpPool CRD (config/k8s/ippool-crd.yaml) or no right to list IpPools: only etcd pools are used; looking again with back-off");
                    }
                }
                Err(e) => warn!(error = %e, "IpPool watch failed; kube-rs retries with back-off"),
            },
            Ok(()) = leading.changed() => {
                metrics.leader.set(i64::from(*leading.borrow()));
                due = Some(Instant::now());
            }
            _ = resync.tick() => due = due.or(Some(Instant::now())),
            Some(()) = pools_changed.recv() => due = due.or(Some(Instant::now() + DEBOUNCE)),
            () = tokio::time::sleep_until(at), if ready && due.is_some() => {
                let listed = ip_pool_cache.complete().then_some(&ip_pool_cache.map);
                let outcome = reconciler.reconcile(&cache.map, &endpoints.map, listed).await;
                metrics.ready.store(outcome.is_ok(), Ordering::Relaxed);
                due = match outcome {
                    Ok(()) => {
                        failures = 0;
                        None
                    }
                    Err(e) => {
                        let wait = (RETRY * 2u32.saturating_pow(failures.min(5))).min(RETRY_MAX);
                        failures += 1;
                        warn!(error = %e, retry_in = ?wait, "reconcile failed");
                        Some(Instant::now() + wait)
                    }
                };
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
    }
    info!("stopping: handing leadership over; the desired keys stay on their lease");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(ETCD_TIMEOUT, election).await;
    Ok(())
}
