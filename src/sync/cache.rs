//! What the Kubernetes watchers report, kept as maps that are swapped in whole after
//! each (re-)list, so a reconcile never sees half a list.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ::kube::runtime::watcher::Event;

/// Objects of one kind from one watcher per scope, reduced to `V` and keyed by
/// `namespace/name`.
pub struct WatchCache<V> {
    /// `None` scope: all namespaces.
    scopes: Vec<Option<String>>,
    /// The objects, whole once [`WatchCache::complete`].
    pub map: BTreeMap<String, V>,
    listing: HashMap<usize, BTreeMap<String, V>>,
    listed: BTreeSet<usize>,
}

impl<V: PartialEq> WatchCache<V> {
    /// A cache for one watcher per namespace of `namespaces` (all namespaces if empty).
    pub fn new(namespaces: &[String]) -> Self {
        let scopes = if namespaces.is_empty() {
            vec![None]
        } else {
            namespaces.iter().cloned().map(Some).collect()
        };
        WatchCache {
            scopes,
            map: BTreeMap::new(),
            listing: HashMap::new(),
            listed: BTreeSet::new(),
        }
    }

    /// Every scope listed once and none in the middle of a re-list: the map is complete.
    pub fn complete(&self) -> bool {
        self.listing.is_empty() && self.listed.len() == self.scopes.len()
    }

    /// Apply one event of watcher `i`; true when the map changed. `name` gives an
    /// object's key; `keep` reduces it, or drops it (`None`: not ours).
    pub fn apply<K>(
        &mut self,
        i: usize,
        event: Event<K>,
        name: impl Fn(&K) -> String,
        keep: impl Fn(&K) -> Option<V>,
    ) -> bool {
        match event {
            Event::Init => {
                self.listing.insert(i, BTreeMap::new());
                false
            }
            Event::InitApply(obj) => {
                if let Some(v) = keep(&obj) {
                    self.listing.entry(i).or_default().insert(name(&obj), v);
                }
                false
            }
            Event::InitDone => {
                let fresh = self.listing.remove(&i).unwrap_or_default();
                let scope = self.scopes.get(i).cloned().flatten();
                self.map.retain(|name, _| {
                    scope
                        .as_ref()
                        .is_some_and(|ns| !name.starts_with(&format!("{ns}/")))
                });
                self.map.extend(fresh);
                self.listed.insert(i);
                true
            }
            Event::Apply(obj) => match keep(&obj) {
                Some(v) => {
                    let key = name(&obj);
                    let changed = self.map.get(&key) != Some(&v);
                    self.map.insert(key, v);
                    changed
                }
                None => self.map.remove(&name(&obj)).is_some(),
            },
            Event::Delete(obj) => self.map.remove(&name(&obj)).is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Objects are `(namespace, name, value)`; a value of 0 is "not ours".
    type Obj = (&'static str, &'static str, u32);

    fn apply(cache: &mut WatchCache<u32>, i: usize, event: Event<Obj>) -> bool {
        cache.apply(
            i,
            event,
            |o| format!("{}/{}", o.0, o.1),
            |o| (o.2 != 0).then_some(o.2),
        )
    }

    #[test]
    fn the_cache_is_complete_only_between_lists_and_a_relist_replaces_only_its_namespace() {
        let mut cache = WatchCache::new(&["a".into(), "b".into()]);
        assert!(!cache.complete());
        for (i, ns) in [(0, "a"), (1, "b")] {
            apply(&mut cache, i, Event::Init);
            apply(&mut cache, i, Event::InitApply((ns, "web", 1)));
            apply(&mut cache, i, Event::InitApply((ns, "other", 0)));
            assert!(apply(&mut cache, i, Event::InitDone));
        }
        assert!(cache.complete());
        assert_eq!(cache.map.len(), 2, "objects not ours are left out");
        // A re-list of `a` (after 410 Gone): incomplete until it is done, then `a/web`
        // is gone because the new list lacks it, and `b/web` is untouched.
        apply(&mut cache, 0, Event::Init);
        apply(&mut cache, 0, Event::InitApply(("a", "api", 1)));
        assert!(!cache.complete());
        apply(&mut cache, 0, Event::InitDone);
        assert!(cache.complete());
        let names: Vec<&String> = cache.map.keys().collect();
        assert_eq!(names, ["a/api", "b/web"]);
        assert!(apply(&mut cache, 1, Event::Delete(("b", "web", 1))));
        assert_eq!(cache.map.len(), 1);
    }

    #[test]
    fn only_a_change_of_what_is_kept_counts_and_an_object_that_stops_being_ours_leaves() {
        let mut cache = WatchCache::new(&[]);
        apply(&mut cache, 0, Event::Init);
        apply(&mut cache, 0, Event::InitDone);
        assert!(apply(&mut cache, 0, Event::Apply(("a", "web", 1))));
        assert!(!apply(&mut cache, 0, Event::Apply(("a", "web", 1))));
        assert!(apply(&mut cache, 0, Event::Apply(("a", "web", 2))));
        assert!(apply(&mut cache, 0, Event::Apply(("a", "web", 0))));
        assert!(cache.map.is_empty());
        assert!(!apply(&mut cache, 0, Event::Apply(("a", "web", 0))));
    }
}
