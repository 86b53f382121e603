//! Compact sets of hashes for walks over every object of a store (gc's mark, eviction's
//! owners, the young closure): what such a walk must remember costs about 32 bytes per hash,
//! not the 40–80 of a `std::collections::HashSet<Hash>` (buckets at 7/8 load, doubled).
//!
//! A [`Hashes`] is a sorted vector plus a small hash set of recent insertions, merged into the
//! vector (in place, from the back) when it reaches 1/16 of it: at most about 37 bytes per
//! hash at any moment, `O(log n)` per lookup, amortised `O(1)` moves per insertion (each
//! merge moves the vector once; the vector grows by 1/16 per merge). A [`Layers`] is a stack
//! of them that never holds a hash twice: the mark's refs, pins and cache entries, each told
//! apart without a copy of the others.

use std::collections::HashSet;

use crate::hash::Hash;

/// The smallest batch of recent insertions merged at once.
const MIN_RECENT: usize = 4096;

/// A set of hashes in about 32 bytes each (see the module docs).
#[derive(Debug, Default, Clone)]
pub(crate) struct Hashes {
    sorted: Vec<Hash>,
    recent: HashSet<Hash>,
}

impl Hashes {
    pub(crate) fn new() -> Hashes {
        Hashes::default()
    }

    pub(crate) fn contains(&self, h: &Hash) -> bool {
        self.recent.contains(h) || self.sorted.binary_search(h).is_ok()
    }

    /// Adds `h`; false if it was there already.
    pub(crate) fn insert(&mut self, h: Hash) -> bool {
        if self.sorted.binary_search(&h).is_ok() || !self.recent.insert(h) {
            return false;
        }
        if self.recent.len() >= MIN_RECENT.max(self.sorted.len() / 16) {
            self.merge();
        }
        true
    }

    pub(crate) fn len(&self) -> usize {
        self.sorted.len() + self.recent.len()
    }

    /// Moves the recent insertions into the sorted vector: grown by exactly their number (a
    /// large vector is grown in place by `mremap`, not copied), then merged from the back.
    fn merge(&mut self) {
        let mut add: Vec<Hash> = self.recent.drain().collect();
        add.sort_unstable();
        let old = self.sorted.len();
        self.sorted.reserve_exact(add.len());
        self.sorted.extend_from_slice(&add);
        let (mut i, mut j, mut k) = (old, add.len(), self.sorted.len());
        while j > 0 {
            k -= 1;
            if i > 0 && self.sorted[i - 1] > add[j - 1] {
                self.sorted[k] = self.sorted[i - 1];
                i -= 1;
            } else {
                self.sorted[k] = add[j - 1];
                j -= 1;
            }
        }
    }

    /// The hashes, sorted.
    pub(crate) fn into_sorted(mut self) -> Vec<Hash> {
        self.merge();
        self.sorted
    }
}

impl IntoIterator for Hashes {
    type Item = Hash;
    type IntoIter = std::vec::IntoIter<Hash>;
    fn into_iter(self) -> Self::IntoIter {
        self.into_sorted().into_iter()
    }
}

impl FromIterator<Hash> for Hashes {
    fn from_iter<I: IntoIterator<Item = Hash>>(iter: I) -> Hashes {
        let mut s = Hashes::new();
        for h in iter {
            s.insert(h);
        }
        s
    }
}

/// A stack of disjoint [`Hashes`]: a hash is inserted into the top layer unless some layer
/// holds it already.
#[derive(Debug, Clone)]
pub(crate) struct Layers {
    layers: Vec<Hashes>,
}

impl Default for Layers {
    fn default() -> Layers {
        Layers {
            layers: vec![Hashes::new()],
        }
    }
}

impl Layers {
    /// Starts a new top layer; returns its index.
    pub(crate) fn push_layer(&mut self) -> usize {
        self.layers.push(Hashes::new());
        self.layers.len() - 1
    }

    /// Adds `h` to the top layer; false if any layer holds it.
    pub(crate) fn insert(&mut self, h: Hash) -> bool {
        let top = self.layers.len() - 1;
        if self.layers[..top].iter().any(|l| l.contains(&h)) {
            return false;
        }
        self.layers[top].insert(h)
    }

    pub(crate) fn contains(&self, h: &Hash) -> bool {
        self.layers.iter().any(|l| l.contains(h))
    }

    /// True if one of the layers `range` holds `h`.
    pub(crate) fn contains_in(&self, range: std::ops::Range<usize>, h: &Hash) -> bool {
        self.layers
            .get(range)
            .is_some_and(|ls| ls.iter().any(|l| l.contains(h)))
    }

    pub(crate) fn len(&self) -> usize {
        self.layers.iter().map(Hashes::len).sum()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(i: u32) -> Hash {
        Hash::of(&i.to_le_bytes())
    }

    /// The compact set answers as a `HashSet` does, across many merges.
    #[test]
    fn compact_set_agrees_with_a_hash_set() {
        let mut s = Hashes::new();
        let mut std_set = HashSet::new();
        for i in 0..50_000u32 {
            let x = h(i % 37_000);
            assert_eq!(s.insert(x), std_set.insert(x), "insert {i}");
            assert_eq!(s.len(), std_set.len());
        }
        for i in 0..40_000u32 {
            assert_eq!(s.contains(&h(i)), std_set.contains(&h(i)), "contains {i}");
        }
        let mut want: Vec<Hash> = std_set.into_iter().collect();
        want.sort_unstable();
        assert_eq!(s.into_sorted(), want);
    }

    /// Issue 26's goal for gc's mark: at most 40 bytes per hash, whatever the moment (the
    /// vector's capacity and the recent set's table, as allocated).
    #[test]
    fn a_set_costs_at_most_40_bytes_per_hash() {
        let mut s = Hashes::new();
        for i in 0..300_000u32 {
            s.insert(h(i));
            if i % 997 == 0 && s.len() > 50_000 {
                // A hash set's table has 8/7 of its capacity in buckets of 32 + 1 bytes.
                let bytes = s.sorted.capacity() * 32 + s.recent.capacity() * 33 * 8 / 7;
                assert!(
                    bytes <= 40 * s.len(),
                    "{} bytes for {} hashes",
                    bytes,
                    s.len()
                );
            }
        }
    }

    #[test]
    fn layers_never_hold_a_hash_twice() {
        let mut l = Layers::default();
        assert!(l.insert(h(1)) && l.insert(h(2)));
        let second = l.push_layer();
        assert!(!l.insert(h(1)), "already in layer 0");
        assert!(l.insert(h(3)));
        assert_eq!(l.len(), 3);
        assert!(l.contains_in(0..second, &h(2)) && !l.contains_in(0..second, &h(3)));
        assert!(l.contains_in(second..second + 1, &h(3)));
        assert!(!l.contains_in(5..6, &h(3)));
        assert!(l.contains(&h(1)) && !l.contains(&h(4)));
    }
}
