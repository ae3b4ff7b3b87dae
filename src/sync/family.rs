//! Dual-stack LoadBalancer Services (`spec.ipFamilyPolicy`, `spec.ipFamilies`): one IP
//! per family, each allocated like a Service's only IP. Pure.
//!
//! A dual-stack Service becomes one allocation slot per family: the first family keeps
//! the Service's own record (`<ns>/<name>`), the second has `<ns>/<name>/ipv4` or
//! `<ns>/<name>/ipv6`, so a single-stack Service's record is the same as before.

use super::service::ServiceView;
pub use super::service::{Family, Stack};

/// The allocation record (slot) of `svc`: its name, or for its second family the name
/// and the family.
pub fn slot(svc: &ServiceView) -> String {
    match (svc.secondary, svc.family) {
        (true, Some(f)) => format!("{}/{}", svc.name, f.record_suffix()),
        _ => svc.name.clone(),
    }
}

/// The Service (`namespace/name`) of an allocation record.
pub fn service_of(slot: &str) -> &str {
    match slot.match_indices('/').nth(1) {
        Some((i, _)) => &slot[..i],
        None => slot,
    }
}

/// One view per allocation slot: a dual-stack LoadBalancer Service with two families
/// listed becomes two (the second without externalIPs, which the first carries); every
/// other Service stays as it is.
pub fn per_family(views: Vec<ServiceView>) -> Vec<ServiceView> {
    let mut out = Vec::with_capacity(views.len());
    for view in views {
        let dual = view.load_balancer && view.stack != Stack::Single && view.families.len() >= 2;
        if !dual {
            out.push(view);
            continue;
        }
        let (first, second) = (view.families[0], view.families[1]);
        let secondary = ServiceView {
            family: Some(second),
            secondary: true,
            external_ips: Vec::new(),
            ..view.clone()
        };
        out.push(ServiceView {
            family: Some(first),
            ..view
        });
        out.push(secondary);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dual_stack_service_gets_a_record_per_family_and_a_single_stack_one_is_unchanged() {
        let dual = ServiceView {
            name: "shop/web".into(),
            load_balancer: true,
            stack: Stack::Require,
            families: vec![Family::V6, Family::V4],
            external_ips: vec!["198.51.100.20".into()],
            ..Default::default()
        };
        let single = ServiceView {
            name: "shop/api".into(),
            load_balancer: true,
            families: vec![Family::V4],
            ..Default::default()
        };
        let views = per_family(vec![dual, single]);
        let slots: Vec<String> = views.iter().map(slot).collect();
        assert_eq!(slots, ["shop/web", "shop/web/ipv4", "shop/api"]);
        assert_eq!(views[0].family, Some(Family::V6));
        assert_eq!(views[1].external_ips, Vec::<String>::new());
        assert_eq!(views[2].family, None);
        assert_eq!(service_of("shop/web/ipv4"), "shop/web");
        assert_eq!(service_of("shop/web"), "shop/web");
    }
}
