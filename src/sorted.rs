//! One pass over two maps sorted by the same key. At 10,000 IPs, looking each key of
//! one map up in the other took a tenth of every reconcile; walking both is linear.

use std::borrow::Borrow;
use std::collections::BTreeMap;

/// Each item of `a` (sorted by key, as `b` is) with `b`'s value for its key, if any.
pub fn alongside<'b, K: Ord + 'b, Q: Borrow<K>, A, B>(
    a: impl Iterator<Item = (Q, A)>,
    b: &'b BTreeMap<K, B>,
) -> impl Iterator<Item = (Q, A, Option<&'b B>)> {
    let mut others = b.iter().peekable();
    a.map(move |(key, value)| {
        while others.next_if(|(other, _)| *other < key.borrow()).is_some() {}
        let found = others.next_if(|(other, _)| *other == key.borrow());
        (key, value, found.map(|(_, v)| v))
    })
}

/// The entries of `a` whose key `b` lacks, in key order.
pub fn missing_from<'a, K: Ord, A, B>(
    a: &'a BTreeMap<K, A>,
    b: &'a BTreeMap<K, B>,
) -> impl Iterator<Item = (&'a K, &'a A)> + 'a {
    alongside(a.iter(), b)
        .filter(|(_, _, found)| found.is_none())
        .map(|(key, value, _)| (key, value))
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

    #[test]
    fn each_key_gets_the_other_maps_value() {
        let b: BTreeMap<u32, char> = [(2, 'b'), (3, 'c'), (8, 'h')].into();
        let found: Vec<(u32, Option<char>)> =
            alongside([(1, ()), (3, ()), (8, ())].into_iter(), &b)
                .map(|(k, _, v)| (k, v.copied()))
                .collect();
        assert_eq!(found, [(1, None), (3, Some('c')), (8, Some('h'))]);
    }
}
