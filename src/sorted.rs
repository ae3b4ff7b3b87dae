//! One pass over two maps sorted by the same key. At 10,000 IPs, looking each key of
//! one map up in the other took a tenth of every reconcile; walking both is linear.

use std::collections::BTreeMap;

/// The entries of `a` whose key `b` lacks, in key order.
pub fn missing_from<'a, K: Ord, A, B>(
    a: &'a BTreeMap<K, A>,
    b: &'a BTreeMap<K, B>,
) -> impl Iterator<Item = (&'a K, &'a A)> + 'a {
    let mut others = b.keys().peekable();
    a.iter().filter(move |&(key, _)| {
        while others.next_if(|other| *other < key).is_some() {}
        others.peek() != Some(&key)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_keys_the_other_map_lacks_remain() {
        let a: BTreeMap<u32, char> = [(1, 'a'), (3, 'c'), (5, 'e'), (7, 'g')].into();
        let b: BTreeMap<u32, ()> = [(0, ()), (3, ()), (4, ()), (7, ()), (9, ())].into();
        let left: Vec<u32> = missing_from(&a, &b).map(|(k, _)| *k).collect();
        assert_eq!(left, [1, 5]);
        let none: BTreeMap<u32, ()> = BTreeMap::new();
        assert_eq!(missing_from(&a, &none).count(), 4);
        assert_eq!(missing_from(&none, &a).count(), 0);
    }
}
