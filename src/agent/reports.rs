//! What an agent reports about its IPs: the held-addresses gauges and, once per
//! reason, the desired IPs it does not serve.

use std::collections::BTreeSet;
use std::net::IpAddr;

use tracing::warn;

use super::Agent;
use crate::model::Replicas;
use crate::observed::LocalAddress;
use crate::plan::{eligibility, Mode};

impl Agent {
    /// Set the held-addresses gauges from a converged address table.
    /// Publish what this host holds: counts by kind, and one series per IP.
    pub(super) fn count_held(&mut self, owned: &BTreeSet<LocalAddress>) {
        let kind = |ip: &IpAddr| match self.view.desired.get(ip) {
            Some(d) if d.replicas == Replicas::EXCLUSIVE => "exclusive",
            _ => "shared",
        };
        let held: BTreeSet<crate::metrics::HeldLabel> = owned
            .iter()
            .map(|a| crate::metrics::HeldLabel {
                ip: a.ip.to_string(),
                kind: kind(&a.ip),
            })
            .collect();
        let exclusive = held.iter().filter(|h| h.kind == "exclusive").count();
        let count = |kind| crate::metrics::KindLabel { kind };
        let m = &self.metrics;
        m.ips_held
            .get_or_create(&count("exclusive"))
            .set(exclusive as i64);
        m.ips_held
            .get_or_create(&count("shared"))
            .set((held.len() - exclusive) as i64);
        for label in self.held_series.difference(&held) {
            m.ip_held.remove(label);
        }
        for label in held.difference(&self.held_series) {
            m.ip_held.get_or_create(label).set(1);
        }
        self.held_series = held;
    }

    /// Log once why a desired IP is not served here.
    pub(super) fn report_ineligible(&mut self) {
        let inputs = Some((
            self.view.desired_version,
            self.draining(),
            self.conflicts.ips.clone(),
        ));
        if self.ineligible_from == inputs {
            return;
        }
        self.ineligible_from = inputs;
        // A down link is logged once, in check_interfaces, not per IP.
        let all_up: Vec<_> = self
            .links
            .iter()
            .map(|l| crate::plan::Link {
                up: true,
                ..l.clone()
            })
            .collect();
        let mut me = self.me(Mode::Serve);
        me.links = &all_up;
        let mut now_ineligible = std::collections::HashMap::new();
        for (&ip, desired) in &self.view.desired {
            if let Err(reason) = eligibility(&me, ip, desired) {
                if self.ineligible.get(&ip) != Some(&reason) {
                    warn!(%ip, reason = %reason, "desired IP not served by this agent");
                }
                now_ineligible.insert(ip, reason);
            }
        }
        self.ineligible = now_ineligible;
    }
}
