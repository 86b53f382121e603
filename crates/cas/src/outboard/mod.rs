//! Outboards: the inner hashes of an object's BLAKE3 tree, kept beside the object so that any
//! byte range can be verified against the object's name by reading that range and O(log n)
//! hashes (docs/format.md, "Outboards"). Pure tree arithmetic, the streaming tree hasher the
//! put path uses, and the decoder; the store side is in `range`.
//!
//! The tree is BLAKE3's own, cut at *chunk groups* of [`GROUP`] bytes (16 chunks): a group's
//! chaining value is computed by `blake3::hazmat` exactly as BLAKE3 computes that subtree, so
//! the root of the group tree is the object's hash, its name. An outboard is a 24-byte header
//! followed by the `(left, right)` child pairs of every parent node, 64 bytes each, in
//! post-order — the order a streaming hasher finishes them, so a put writes its outboard
//! front to back while it hashes.

use blake3::hazmat::{
    merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt as _, Mode,
};

use crate::hash::Hash;

pub(crate) mod range;

/// log2 of [`GROUP`].
pub(crate) const GROUP_LOG: u8 = 14;
/// Bytes per chunk group: 16 BLAKE3 chunks, bao-tree's `BlockSize(4)` (docs/decisions.md).
pub(crate) const GROUP: u64 = 1 << GROUP_LOG;
/// Objects at least this large get an outboard when they are put, or on first range read;
/// smaller ones are verified whole (docs/decisions.md).
pub(crate) const THRESHOLD: u64 = 4 << 20;
/// The header: magic, group log, 7 zero bytes, the object's length (u64 little-endian).
pub(crate) const HEADER_LEN: u64 = 24;
const MAGIC: &[u8; 8] = b"casob01\n";
/// Bytes per parent node: the left and the right child's chaining values.
pub(crate) const PAIR: u64 = 64;

/// Number of chunk groups of an object of `len` bytes (the empty object is one empty group).
pub(crate) fn groups(len: u64) -> u64 {
    len.div_ceil(GROUP).max(1)
}

/// The exact size of the outboard of an object of `len` bytes.
pub(crate) fn outboard_len(len: u64) -> u64 {
    HEADER_LEN + PAIR * (groups(len) - 1)
}

/// The header of the outboard of an object of `len` bytes.
pub(crate) fn header(len: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8] = GROUP_LOG;
    h[16..].copy_from_slice(&len.to_le_bytes());
    h
}

/// Checks an outboard's header and size against the object's length. Nothing else is
/// trusted: the pairs are checked against the name as they are used.
///
/// # Errors
/// What is wrong, for messages.
pub(crate) fn check_header(head: &[u8], file_len: u64, object_len: u64) -> Result<(), String> {
    if head.len() < HEADER_LEN as usize {
        return Err(format!("{} bytes, shorter than its header", head.len()));
    }
    if &head[..8] != MAGIC {
        return Err("does not start with the outboard magic".into());
    }
    if head[8] != GROUP_LOG {
        return Err(format!(
            "chunk groups of 2^{} bytes, not 2^{GROUP_LOG}",
            head[8]
        ));
    }
    if head[9..16].iter().any(|&b| b != 0) {
        return Err("reserved header bytes are not zero".into());
    }
    let mut l = [0u8; 8];
    l.copy_from_slice(&head[16..24]);
    let len = u64::from_le_bytes(l);
    if len != object_len {
        return Err(format!("is for {len} bytes, the object has {object_len}"));
    }
    let want = outboard_len(object_len);
    if file_len != want {
        return Err(format!("holds {file_len} bytes, not {want}"));
    }
    Ok(())
}

/// The largest power of two strictly less than `n` (n ≥ 2): the left subtree's group count.
fn left_groups(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (n - 1).ilog2()
}

/// One step of the path from the root to a group: the parent node's index in the outboard
/// (post-order), and whether the group is under its left child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Step {
    pub(crate) node: u64,
    pub(crate) left: bool,
}

/// The parent nodes from the root down to group `g` of `n` groups (empty for one group).
pub(crate) fn path(n: u64, g: u64) -> Vec<Step> {
    let mut steps = Vec::with_capacity(64);
    let (mut start, mut count, mut base) = (0u64, n, 0u64);
    while count > 1 {
        let l = left_groups(count);
        let node = base + count - 2;
        if g < start + l {
            steps.push(Step { node, left: true });
            count = l;
        } else {
            steps.push(Step { node, left: false });
            start += l;
            base += l - 1;
            count -= l;
        }
    }
    steps
}

/// The chaining value of group `g` (its bytes `data`), or the root hash if it is the only one.
pub(crate) fn group_cv(data: &[u8], g: u64, only: bool) -> ChainingValue {
    if only {
        return *blake3::hash(data).as_bytes();
    }
    blake3::Hasher::new()
        .set_input_offset(g * GROUP)
        .update(data)
        .finalize_non_root()
}

/// The chaining value of a parent node from its pair (`root`: the root node, giving the hash).
pub(crate) fn merge(pair: &[u8; PAIR as usize], root: bool) -> ChainingValue {
    let (mut l, mut r) = ([0u8; 32], [0u8; 32]);
    l.copy_from_slice(&pair[..32]);
    r.copy_from_slice(&pair[32..]);
    if root {
        *merge_subtrees_root(&l, &r, Mode::Hash).as_bytes()
    } else {
        merge_subtrees_non_root(&l, &r, Mode::Hash)
    }
}

/// Streams bytes through BLAKE3 a chunk group at a time, giving the same hash as
/// `blake3::hash` and, while recording, the outboard's pairs in the order they belong in
/// the file. The last group is held back until more bytes arrive or the end, as BLAKE3
/// holds back its last chunk: only then is it known whether it is the root.
#[derive(Clone)]
pub(crate) struct TreeHasher {
    buf: Vec<u8>,
    /// Groups hashed so far (all but the held-back one).
    done: u64,
    /// Chaining values of the complete subtrees so far, largest first.
    stack: Vec<ChainingValue>,
    /// Pairs not yet taken by [`TreeHasher::take_pairs`].
    pairs: Vec<u8>,
    len: u64,
}

impl Default for TreeHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl TreeHasher {
    pub(crate) fn new() -> Self {
        TreeHasher {
            buf: Vec::with_capacity(GROUP as usize),
            done: 0,
            stack: Vec::with_capacity(64),
            pairs: Vec::new(),
            len: 0,
        }
    }

    /// Bytes hashed so far.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    fn push_group(&mut self, group: &[u8]) {
        let cv = group_cv(group, self.done, false);
        self.done += 1;
        self.stack.push(cv);
        // More bytes follow this group, so every merge here is of a non-root node.
        while self.stack.len() > self.done.count_ones() as usize {
            let r = self.stack.pop().unwrap_or_default();
            let l = self.stack.pop().unwrap_or_default();
            self.pairs.extend_from_slice(&l);
            self.pairs.extend_from_slice(&r);
            self.stack.push(merge_subtrees_non_root(&l, &r, Mode::Hash));
        }
    }

    pub(crate) fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        let g = GROUP as usize;
        if !self.buf.is_empty() || data.len() <= g {
            let take = (g - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if data.is_empty() {
                return;
            }
            let buf = std::mem::take(&mut self.buf);
            self.push_group(&buf);
            self.buf = buf;
            self.buf.clear();
        }
        while data.len() > g {
            self.push_group(&data[..g]);
            data = &data[g..];
        }
        self.buf.extend_from_slice(data);
    }

    /// The pairs finished since the last call, to be appended to the outboard.
    pub(crate) fn take_pairs(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pairs)
    }

    /// Pairs waiting to be taken, in bytes.
    pub(crate) fn pending(&self) -> usize {
        self.pairs.len()
    }

    /// The hash of everything given; the last pairs (the right edge of the tree, ending with
    /// the root's) join the pending ones. Call once.
    pub(crate) fn finalize(&mut self) -> Hash {
        if self.done == 0 {
            return Hash::from_bytes(*blake3::hash(&self.buf).as_bytes());
        }
        let mut cur = group_cv(&self.buf, self.done, false);
        while let Some(l) = self.stack.pop() {
            self.pairs.extend_from_slice(&l);
            self.pairs.extend_from_slice(&cur);
            if self.stack.is_empty() {
                return Hash::from_bytes(*merge_subtrees_root(&l, &cur, Mode::Hash).as_bytes());
            }
            cur = merge_subtrees_non_root(&l, &cur, Mode::Hash);
        }
        // Unreachable: `done > 0` leaves at least one value on the stack.
        Hash::from_bytes(*blake3::hash(&self.buf).as_bytes())
    }
}

/// Below this many bytes a subtree is hashed on the calling thread.
const PARALLEL_SUBTREE: u64 = 1 << 20;

/// Hashes `data` and builds its whole outboard (header included), on all cores for large
/// inputs. The same result as a [`TreeHasher`] fed everything.
pub(crate) fn build(data: &[u8], parallel: bool) -> (Hash, Vec<u8>) {
    let len = data.len() as u64;
    let n = groups(len);
    let mut out = vec![0u8; outboard_len(len) as usize];
    out[..HEADER_LEN as usize].copy_from_slice(&header(len));
    if n == 1 {
        return (Hash::of(data), out);
    }
    let cv = subtree(data, 0, n, &mut out[HEADER_LEN as usize..], true, parallel);
    (Hash::from_bytes(cv), out)
}

/// The chaining value (or, for the root, the hash) of `count` groups starting at group
/// `start`, writing its `count - 1` pairs in post-order into `out`.
fn subtree(
    data: &[u8],
    start: u64,
    count: u64,
    out: &mut [u8],
    root: bool,
    parallel: bool,
) -> ChainingValue {
    if count == 1 {
        return group_cv(data, start, root);
    }
    let l = left_groups(count);
    let split = (l * GROUP) as usize;
    let (ldata, rdata) = data.split_at(split);
    let (left_out, rest) = out.split_at_mut(((l - 1) * PAIR) as usize);
    let (right_out, own) = rest.split_at_mut(rest.len() - PAIR as usize);
    let (lcv, rcv) = if parallel && data.len() as u64 >= 2 * PARALLEL_SUBTREE {
        rayon_core::join(
            || subtree(ldata, start, l, left_out, false, true),
            || subtree(rdata, start + l, count - l, right_out, false, true),
        )
    } else {
        (
            subtree(ldata, start, l, left_out, false, false),
            subtree(rdata, start + l, count - l, right_out, false, false),
        )
    };
    own[..32].copy_from_slice(&lcv);
    own[32..].copy_from_slice(&rcv);
    let mut pair = [0u8; PAIR as usize];
    pair.copy_from_slice(own);
    merge(&pair, root)
}

/// Checks every pair of a whole outboard (`pairs`: the bytes after the header) against the
/// object's name: each pair must merge to the value its parent holds for it, the root's to
/// the name. True if all do. Leaves (group values) are checked only against the data, by
/// range reads and by verify's rehash of the object.
pub(crate) fn pairs_consistent(pairs: &[u8], len: u64, name: &Hash) -> bool {
    let n = groups(len);
    if pairs.len() as u64 != PAIR * (n - 1) {
        return false;
    }
    if n == 1 {
        return true;
    }
    // Walk the tree from the root: (first node index, group count, expected value, root?).
    let mut todo: Vec<(u64, u64, ChainingValue, bool)> = vec![(0, n, *name.as_bytes(), true)];
    while let Some((base, count, want, root)) = todo.pop() {
        if count < 2 {
            continue;
        }
        let node = base + count - 2;
        let at = (node * PAIR) as usize;
        let mut pair = [0u8; PAIR as usize];
        pair.copy_from_slice(&pairs[at..at + PAIR as usize]);
        if merge(&pair, root) != want {
            return false;
        }
        let l = left_groups(count);
        let (mut lcv, mut rcv) = ([0u8; 32], [0u8; 32]);
        lcv.copy_from_slice(&pair[..32]);
        rcv.copy_from_slice(&pair[32..]);
        todo.push((base, l, lcv, false));
        todo.push((base + l - 1, count - l, rcv, false));
    }
    true
}

/// What a failed check of one group found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mismatch {
    /// A pair of the outboard does not merge to what its (checked) parent says: the outboard
    /// is wrong.
    Outboard,
    /// The group's bytes do not hash to what the checked outboard says: the object is wrong.
    Data,
}

/// Checked pairs a [`Verifier`] remembers at most (~6 MiB); past that it forgets them all and
/// checks paths from the root again (a long read of a huge object stays bounded in memory).
const KNOWN_MAX: usize = 1 << 16;

/// Verifies groups of one object against its name, reading pairs through `read_pair` and
/// remembering the pairs it has checked (the upper levels are shared by all groups).
pub(crate) struct Verifier {
    name: Hash,
    len: u64,
    n: u64,
    /// Checked pairs by node index.
    known: std::collections::HashMap<u64, [u8; PAIR as usize]>,
}

impl Verifier {
    pub(crate) fn new(name: Hash, len: u64) -> Self {
        Verifier {
            name,
            len,
            n: groups(len),
            known: std::collections::HashMap::new(),
        }
    }

    /// The object's length this verifier was made for.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Checks group `g` (its bytes `data`, of the length the object's size gives it).
    /// `read_pair(node)` reads a pair from the outboard; its errors are returned as they are.
    pub(crate) fn check<E>(
        &mut self,
        g: u64,
        data: &[u8],
        read_pair: &mut dyn FnMut(u64) -> Result<[u8; PAIR as usize], E>,
    ) -> Result<Result<(), Mismatch>, E> {
        let want_len = if g + 1 == self.n {
            self.len - g * GROUP
        } else {
            GROUP
        };
        if g >= self.n || data.len() as u64 != want_len {
            return Ok(Err(Mismatch::Data));
        }
        let mut want = *self.name.as_bytes();
        let mut root = true;
        for step in path(self.n, g) {
            let pair = if let Some(p) = self.known.get(&step.node) {
                *p
            } else {
                let p = read_pair(step.node)?;
                if merge(&p, root) != want {
                    return Ok(Err(Mismatch::Outboard));
                }
                if self.known.len() >= KNOWN_MAX {
                    self.known.clear();
                }
                self.known.insert(step.node, p);
                p
            };
            want.copy_from_slice(if step.left { &pair[..32] } else { &pair[32..] });
            root = false;
        }
        if group_cv(data, g, self.n == 1) == want {
            Ok(Ok(()))
        } else {
            Ok(Err(Mismatch::Data))
        }
    }
}

#[cfg(test)]
#[allow(clippy::many_single_char_names)] // s, e, g, h, t, v: the tree's usual letters
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bytes(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 13) as u8)
            .collect()
    }

    #[test]
    fn path_matches_post_order() {
        // 4 groups: P01 (0), P23 (1), root (2).
        assert_eq!(
            path(4, 3),
            vec![
                Step {
                    node: 2,
                    left: false
                },
                Step {
                    node: 1,
                    left: false
                }
            ]
        );
        // 5 groups: P01, P23, P0123, root(P0123, g4).
        assert_eq!(
            path(5, 4),
            vec![Step {
                node: 3,
                left: false
            }]
        );
        assert_eq!(path(5, 0).len(), 3);
        assert!(path(1, 0).is_empty());
    }

    #[test]
    fn sizes_at_the_edges() {
        for len in [
            0,
            1,
            GROUP - 1,
            GROUP,
            GROUP + 1,
            2 * GROUP,
            3 * GROUP + 7,
            64 * GROUP,
        ] {
            let data = bytes(len as usize, 3);
            let mut t = TreeHasher::new();
            t.update(&data);
            let h = t.finalize();
            assert_eq!(h, Hash::of(&data), "len {len}");
            let (bh, ob) = build(&data, true);
            assert_eq!(bh, h);
            assert_eq!(&ob[HEADER_LEN as usize..], &t.take_pairs()[..], "len {len}");
            assert_eq!(ob.len() as u64, outboard_len(len));
            assert!(check_header(&ob, ob.len() as u64, len).is_ok());
            assert!(pairs_consistent(&ob[HEADER_LEN as usize..], len, &h));
            let mut v = Verifier::new(h, len);
            for g in 0..groups(len) {
                let s = (g * GROUP) as usize;
                let e = ((g + 1) * GROUP).min(len) as usize;
                let mut rp = |node: u64| -> Result<[u8; 64], ()> {
                    let at = (HEADER_LEN + node * PAIR) as usize;
                    Ok(ob[at..at + 64].try_into().unwrap())
                };
                assert_eq!(
                    v.check(g, &data[s..e], &mut rp),
                    Ok(Ok(())),
                    "len {len} g {g}"
                );
            }
        }
    }

    #[test]
    fn a_flipped_pair_or_byte_is_caught() {
        let len = 9 * GROUP + 100;
        let mut data = bytes(len as usize, 9);
        let (h, mut ob) = build(&data, false);
        let at = HEADER_LEN as usize + 3 * 64 + 5;
        ob[at] ^= 1;
        assert!(!pairs_consistent(&ob[HEADER_LEN as usize..], len, &h));
        let mut found = Vec::new();
        for g in 0..groups(len) {
            let mut v = Verifier::new(h, len);
            let s = (g * GROUP) as usize;
            let e = ((g + 1) * GROUP).min(len) as usize;
            let mut rp = |node: u64| -> Result<[u8; 64], ()> {
                let at = (HEADER_LEN + node * PAIR) as usize;
                Ok(ob[at..at + 64].try_into().unwrap())
            };
            found.push(v.check(g, &data[s..e], &mut rp).unwrap());
        }
        assert!(found.contains(&Err(Mismatch::Outboard)));
        let (_, good) = build(&data, false);
        data[(5 * GROUP + 17) as usize] ^= 0x40;
        let mut v = Verifier::new(h, len);
        let mut rp = |node: u64| -> Result<[u8; 64], ()> {
            let at = (HEADER_LEN + node * PAIR) as usize;
            Ok(good[at..at + 64].try_into().unwrap())
        };
        let g5 = &data[(5 * GROUP) as usize..(6 * GROUP) as usize];
        assert_eq!(v.check(5, g5, &mut rp), Ok(Err(Mismatch::Data)));
        let g4 = &data[(4 * GROUP) as usize..(5 * GROUP) as usize];
        assert_eq!(v.check(4, g4, &mut rp), Ok(Ok(())));
    }

    #[test]
    fn headers_are_checked() {
        let h = header(5 * GROUP);
        let full = outboard_len(5 * GROUP);
        assert!(check_header(&h, full, 5 * GROUP).is_ok());
        assert!(check_header(&h, full + 1, 5 * GROUP).is_err());
        assert!(check_header(&h, full, 5 * GROUP + 1).is_err());
        assert!(check_header(&h[..10], full, 5 * GROUP).is_err());
        let mut bad = h;
        bad[8] = 13;
        assert!(check_header(&bad, full, 5 * GROUP).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// The fuzz target's properties on real outboards with bytes changed, cut or added
        /// (cargo-fuzz needs nightly; this runs on every `cargo test`).
        #[test]
        fn damaged_outboards_are_never_trusted(v in any::<u16>(), flips in proptest::collection::vec((any::<usize>(), 1u8..), 0..4), cut in any::<Option<usize>>()) {
            let mut d = v.to_le_bytes().to_vec();
            let obj = crate::fuzzing::outboard(&d);
            prop_assert!(!obj || d.len() < 2);
            let len = u64::from(v) * 37 % (40 * GROUP + 1);
            let object: Vec<u8> = (0..len).map(|i| (i * 7 + (i >> 9)) as u8).collect();
            let (_, real) = build(&object, false);
            d.extend(&real);
            prop_assert!(crate::fuzzing::outboard(&d), "the real outboard is accepted");
            let mut changed = false;
            for (at, x) in flips {
                let i = 2 + at % (d.len() - 2);
                d[i] ^= x;
                changed = true;
            }
            if let Some(c) = cut {
                d.truncate(2 + c % (d.len() - 1));
                changed = true;
            }
            let accepted = crate::fuzzing::outboard(&d);
            prop_assert!(!accepted || !changed || d[2..] == real[..]);
        }

        /// Fed in arbitrary pieces, the tree hasher gives BLAKE3's hash and the same outboard
        /// as the parallel builder.
        #[test]
        fn streaming_equals_blake3(len in 0usize..(40 * GROUP as usize), cuts in proptest::collection::vec(0usize..70_000, 0..8)) {
            let data = bytes(len, 1);
            let mut t = TreeHasher::new();
            let mut rest = &data[..];
            let mut pairs = Vec::new();
            for c in cuts {
                let c = c.min(rest.len());
                t.update(&rest[..c]);
                pairs.extend(t.take_pairs());
                rest = &rest[c..];
            }
            t.update(rest);
            let h = t.finalize();
            pairs.extend(t.take_pairs());
            prop_assert_eq!(h, Hash::of(&data));
            let (bh, ob) = build(&data, true);
            prop_assert_eq!(bh, h);
            prop_assert_eq!(&ob[HEADER_LEN as usize..], &pairs[..]);
        }
    }
}
