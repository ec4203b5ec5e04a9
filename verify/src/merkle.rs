//! RFC 9162 §2.1 Merkle tree over all records in position order — pure functions.
//!
//! The tree is never materialised. Every *complete* subtree is identified by a
//! [`NodeId`] `(level, index)` covering leaves `[index·2^level, (index+1)·2^level)`;
//! the store persists each one when it completes, so any root, inclusion proof or
//! consistency proof for any tree size needs O(log n) node hashes: this module
//! works out *which* nodes ([`inclusion_plan`], [`consistency_plan`]), the store
//! fetches them in one query, and [`ProofPlan::assemble`] combines them.
//!
//! Leaf index `i` (0-based) is the record at position `i + 1`.

use crate::hash::Digest;
use std::collections::HashMap;

/// Hash of a leaf: SHA-256(0x00 ‖ canonical record bytes).
pub fn leaf_hash(canonical: &[u8]) -> Digest {
    Digest::of_parts(&[&[0x00], canonical])
}

/// Hash of an interior node: SHA-256(0x01 ‖ left ‖ right).
pub fn node_hash(left: &Digest, right: &Digest) -> Digest {
    Digest::of_parts(&[&[0x01], left.as_bytes(), right.as_bytes()])
}

/// Root of the empty tree: SHA-256 of the empty string.
pub fn empty_root() -> Digest {
    Digest::of(b"")
}

/// A complete subtree: leaves `[index << level, (index + 1) << level)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    pub level: u32,
    pub index: u64,
}

impl NodeId {
    pub fn start(&self) -> u64 {
        self.index << self.level
    }
    pub fn end(&self) -> u64 {
        (self.index + 1) << self.level
    }
}

/// The maximal complete subtrees that make up leaves `[start, end)`, left to right.
///
/// For the ranges RFC 9162 proofs use (a left edge aligned to a power of two at
/// least as large as the range), hashing these right-to-left with [`node_hash`]
/// gives exactly MTH of the range.
pub fn range_nodes(start: u64, end: u64) -> Vec<NodeId> {
    let mut out = Vec::new();
    let mut at = start;
    while at < end {
        let mut level = if at == 0 { 63 } else { at.trailing_zeros() };
        while level > 0 && (1u64 << level) > end - at {
            level -= 1;
        }
        out.push(NodeId {
            level,
            index: at >> level,
        });
        at += 1u64 << level;
    }
    out
}

/// Combines the hashes of [`range_nodes`] into the range's Merkle tree hash.
pub fn fold_range(hashes: &[Digest]) -> Option<Digest> {
    let mut iter = hashes.iter().rev();
    let mut acc = *iter.next()?;
    for h in iter {
        acc = node_hash(h, &acc);
    }
    Some(acc)
}

/// Largest power of two strictly smaller than `n` (n ≥ 2).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// Which leaf ranges a proof consists of, in proof order; each range is hashed
/// from its [`range_nodes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProofPlan {
    pub ranges: Vec<(u64, u64)>,
}

/// Why a proof cannot be made or does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("leaf index {index} is not below tree size {size}")]
    LeafOutOfRange { index: u64, size: u64 },
    #[error("consistency proof needs 0 < first ({first}) <= second ({second})")]
    BadSizes { first: u64, second: u64 },
    #[error("tree size {size} exceeds the ledger size {available}")]
    SizeBeyondLedger { size: u64, available: u64 },
    #[error("node {level}/{index} is missing from the store")]
    MissingNode { level: u32, index: u64 },
    #[error("proof does not verify: {0}")]
    Invalid(&'static str),
}

impl ProofPlan {
    /// Every stored node the plan needs.
    pub fn nodes(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self
            .ranges
            .iter()
            .flat_map(|(s, e)| range_nodes(*s, *e))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// The proof hashes, given the hashes of [`ProofPlan::nodes`].
    pub fn assemble(&self, nodes: &HashMap<NodeId, Digest>) -> Result<Vec<Digest>, ProofError> {
        self.ranges
            .iter()
            .map(|(s, e)| range_hash(*s, *e, nodes))
            .collect()
    }
}

/// MTH of leaves `[start, end)` from stored nodes.
pub fn range_hash(
    start: u64,
    end: u64,
    nodes: &HashMap<NodeId, Digest>,
) -> Result<Digest, ProofError> {
    let ids = range_nodes(start, end);
    let mut hashes = Vec::with_capacity(ids.len());
    for id in ids {
        hashes.push(*nodes.get(&id).ok_or(ProofError::MissingNode {
            level: id.level,
            index: id.index,
        })?);
    }
    fold_range(&hashes).ok_or(ProofError::Invalid("empty range"))
}

/// RFC 9162 §2.1.3.1 PATH(m, D[n]) as leaf ranges, bottom-up.
pub fn inclusion_plan(index: u64, size: u64) -> Result<ProofPlan, ProofError> {
    if index >= size {
        return Err(ProofError::LeafOutOfRange { index, size });
    }
    let mut ranges = Vec::new();
    let (mut lo, mut hi, m) = (0u64, size, index);
    // Walk down from the root, collecting siblings top-down, then reverse.
    while hi - lo > 1 {
        let k = split(hi - lo);
        if m < lo + k {
            ranges.push((lo + k, hi));
            hi = lo + k;
        } else {
            ranges.push((lo, lo + k));
            lo += k;
        }
    }
    ranges.reverse();
    Ok(ProofPlan { ranges })
}

/// RFC 9162 §2.1.4.1 PROOF(m, D[n]) as leaf ranges, in proof order.
pub fn consistency_plan(first: u64, second: u64) -> Result<ProofPlan, ProofError> {
    if first == 0 || first > second {
        return Err(ProofError::BadSizes { first, second });
    }
    let mut top_down = Vec::new();
    let (mut lo, mut hi, mut m, mut b) = (0u64, second, first, true);
    loop {
        let n = hi - lo;
        if m == n {
            if !b {
                top_down.push((lo, hi));
            }
            break;
        }
        let k = split(n);
        if m <= k {
            top_down.push((lo + k, hi));
            hi = lo + k;
        } else {
            top_down.push((lo, lo + k));
            lo += k;
            m -= k;
            b = false;
        }
    }
    // SUBPROOF appends each sibling after the recursive part: reverse.
    top_down.reverse();
    Ok(ProofPlan { ranges: top_down })
}

/// RFC 9162 §2.1.3.2: verifies an inclusion proof.
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Digest,
    proof: &[Digest],
    root: &Digest,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::LeafOutOfRange { index, size });
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return Err(ProofError::Invalid("inclusion proof too long"));
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(ProofError::Invalid("inclusion proof too short"));
    }
    if r != *root {
        return Err(ProofError::Invalid(
            "inclusion proof leads to a different root",
        ));
    }
    Ok(())
}

/// RFC 9162 §2.1.4.2: verifies a consistency proof between two roots.
pub fn verify_consistency(
    first: u64,
    second: u64,
    proof: &[Digest],
    first_root: &Digest,
    second_root: &Digest,
) -> Result<(), ProofError> {
    if first == 0 || first > second {
        return Err(ProofError::BadSizes { first, second });
    }
    if first == second {
        if !proof.is_empty() {
            return Err(ProofError::Invalid(
                "proof between equal sizes must be empty",
            ));
        }
        return if first_root == second_root {
            Ok(())
        } else {
            Err(ProofError::Invalid("roots of equal sizes differ"))
        };
    }
    if proof.is_empty() {
        return Err(ProofError::Invalid("empty consistency proof"));
    }
    let mut path: Vec<Digest> = Vec::with_capacity(proof.len() + 1);
    if first.is_power_of_two() {
        path.push(*first_root);
    }
    path.extend_from_slice(proof);
    let (mut f, mut s) = (first - 1, second - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if s == 0 {
            return Err(ProofError::Invalid("consistency proof too long"));
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(ProofError::Invalid("consistency proof too short"));
    }
    if fr != *first_root {
        return Err(ProofError::Invalid(
            "consistency proof does not match the first root",
        ));
    }
    if sr != *second_root {
        return Err(ProofError::Invalid(
            "consistency proof does not match the second root",
        ));
    }
    Ok(())
}

/// The right edge of a growing tree: one hash per complete subtree, highest first.
/// Appending a leaf is amortised O(1) and reports the nodes it completes, which
/// is how the store persists every complete subtree as it appears.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// (level, hash), levels strictly decreasing.
    stack: Vec<(u32, Digest)>,
}

impl Frontier {
    pub fn new() -> Frontier {
        Frontier::default()
    }

    /// Rebuilds a frontier for `size` leaves from the hashes of `range_nodes(0, size)`.
    pub fn from_nodes(size: u64, hashes: &[Digest]) -> Option<Frontier> {
        let ids = range_nodes(0, size);
        if ids.len() != hashes.len() {
            return None;
        }
        Some(Frontier {
            size,
            stack: ids
                .iter()
                .map(|id| id.level)
                .zip(hashes.iter().copied())
                .collect(),
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Hashes of the complete subtrees, left to right (the `range_nodes(0, size)`).
    pub fn hashes(&self) -> Vec<Digest> {
        self.stack.iter().map(|(_, h)| *h).collect()
    }

    /// Adds a leaf hash; returns every node completed by it (the leaf first).
    pub fn push(&mut self, leaf: Digest) -> Vec<(NodeId, Digest)> {
        let index = self.size;
        let mut completed = vec![(NodeId { level: 0, index }, leaf)];
        let (mut level, mut hash) = (0u32, leaf);
        while let Some((top_level, top_hash)) = self.stack.last().copied() {
            if top_level != level {
                break;
            }
            self.stack.pop();
            hash = node_hash(&top_hash, &hash);
            level += 1;
            completed.push((
                NodeId {
                    level,
                    index: index >> level,
                },
                hash,
            ));
        }
        self.stack.push((level, hash));
        self.size += 1;
        completed
    }

    /// The RFC 9162 root of the current tree.
    pub fn root(&self) -> Digest {
        fold_range(&self.hashes()).unwrap_or_else(empty_root)
    }
}

/// Straightforward recursive definitions from RFC 9162, used as the reference
/// the fast paths are tested against (and handy for small in-memory trees).
pub mod reference {
    use super::*;

    pub fn mth(leaves: &[Digest]) -> Digest {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    pub fn path(m: usize, leaves: &[Digest]) -> Vec<Digest> {
        let n = leaves.len();
        if n <= 1 {
            return Vec::new();
        }
        let k = split(n as u64) as usize;
        if m < k {
            let mut p = path(m, &leaves[..k]);
            p.push(mth(&leaves[k..]));
            p
        } else {
            let mut p = path(m - k, &leaves[k..]);
            p.push(mth(&leaves[..k]));
            p
        }
    }

    pub fn proof(m: usize, leaves: &[Digest]) -> Vec<Digest> {
        subproof(m, leaves, true)
    }

    fn subproof(m: usize, leaves: &[Digest], b: bool) -> Vec<Digest> {
        let n = leaves.len();
        if m == n {
            return if b { Vec::new() } else { vec![mth(leaves)] };
        }
        let k = split(n as u64) as usize;
        if m <= k {
            let mut p = subproof(m, &leaves[..k], b);
            p.push(mth(&leaves[k..]));
            p
        } else {
            let mut p = subproof(m - k, &leaves[k..], false);
            p.push(mth(&leaves[..k]));
            p
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn leaves(n: usize, seed: u64) -> Vec<Digest> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                let mut b = [0u8; 24];
                rng.fill(&mut b);
                leaf_hash(&b)
            })
            .collect()
    }

    /// Builds the node map the store would hold after `leaves.len()` appends.
    fn store(leaves: &[Digest]) -> (HashMap<NodeId, Digest>, Vec<Digest>) {
        let mut f = Frontier::new();
        let mut nodes = HashMap::new();
        let mut roots = vec![empty_root()];
        for l in leaves {
            for (id, h) in f.push(*l) {
                nodes.insert(id, h);
            }
            roots.push(f.root());
        }
        (nodes, roots)
    }

    #[test]
    fn frontier_roots_match_reference_for_every_size_to_300() {
        let ls = leaves(300, 1);
        let (nodes, roots) = store(&ls);
        for n in 0..=300usize {
            let expected = reference::mth(&ls[..n]);
            assert_eq!(roots[n], expected, "root at size {n}");
            if n > 0 {
                let from_nodes = range_hash(0, n as u64, &nodes).expect("nodes");
                assert_eq!(from_nodes, expected, "stored-node root at size {n}");
            }
        }
    }

    #[test]
    fn inclusion_proofs_match_reference_and_verify_for_every_size_to_300() {
        let ls = leaves(300, 2);
        let (nodes, roots) = store(&ls);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for n in 1..=300usize {
            // every leaf for small trees, a random sample beyond
            let picks: Vec<usize> = if n <= 40 {
                (0..n).collect()
            } else {
                (0..8)
                    .map(|_| rng.random_range(0..n))
                    .chain([0, n - 1])
                    .collect()
            };
            for m in picks {
                let plan = inclusion_plan(m as u64, n as u64).expect("plan");
                assert!(plan.nodes().len() <= 2 * 64);
                let proof = plan.assemble(&nodes).expect("assemble");
                assert_eq!(proof, reference::path(m, &ls[..n]), "path({m}, {n})");
                verify_inclusion(m as u64, n as u64, &ls[m], &proof, &roots[n]).expect("verifies");
                // Tampering with any proof element, the leaf or the index fails.
                if !proof.is_empty() {
                    let mut bad = proof.clone();
                    let i = rng.random_range(0..bad.len());
                    bad[i].0[0] ^= 1;
                    assert!(verify_inclusion(m as u64, n as u64, &ls[m], &bad, &roots[n]).is_err());
                    assert!(
                        verify_inclusion(m as u64, n as u64, &ls[(m + 1) % n], &proof, &roots[n])
                            .is_err()
                    );
                    let mut short = proof.clone();
                    short.pop();
                    assert!(
                        verify_inclusion(m as u64, n as u64, &ls[m], &short, &roots[n]).is_err()
                    );
                }
            }
        }
    }

    #[test]
    fn consistency_proofs_match_reference_and_verify_for_every_size_to_300() {
        let ls = leaves(300, 4);
        let (nodes, roots) = store(&ls);
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for n in 1..=300usize {
            let picks: Vec<usize> = if n <= 40 {
                (1..=n).collect()
            } else {
                (0..8)
                    .map(|_| rng.random_range(1..=n))
                    .chain([1, n])
                    .collect()
            };
            for m in picks {
                let plan = consistency_plan(m as u64, n as u64).expect("plan");
                let proof = plan.assemble(&nodes).expect("assemble");
                assert_eq!(proof, reference::proof(m, &ls[..n]), "proof({m}, {n})");
                verify_consistency(m as u64, n as u64, &proof, &roots[m], &roots[n])
                    .expect("verifies");
                if m < n {
                    let mut bad = proof.clone();
                    let i = rng.random_range(0..bad.len());
                    bad[i].0[31] ^= 0x80;
                    assert!(
                        verify_consistency(m as u64, n as u64, &bad, &roots[m], &roots[n]).is_err()
                    );
                    let mut wrong_root = roots[m];
                    wrong_root.0[5] ^= 1;
                    assert!(
                        verify_consistency(m as u64, n as u64, &proof, &wrong_root, &roots[n])
                            .is_err()
                    );
                }
            }
        }
    }

    #[test]
    fn plans_need_logarithmically_many_nodes() {
        let n = 1_000_000u64;
        for m in [0, 1, 499_999, 524_287, 524_288, 999_999] {
            assert!(
                inclusion_plan(m, n).expect("plan").nodes().len() <= 40,
                "m={m}"
            );
        }
        for m in [1, 3, 524_288, 700_001, 999_999] {
            assert!(
                consistency_plan(m, n).expect("plan").nodes().len() <= 60,
                "m={m}"
            );
        }
    }

    #[test]
    fn bad_arguments_are_errors() {
        assert!(matches!(
            inclusion_plan(5, 5),
            Err(ProofError::LeafOutOfRange { .. })
        ));
        assert!(matches!(
            consistency_plan(0, 5),
            Err(ProofError::BadSizes { .. })
        ));
        assert!(matches!(
            consistency_plan(6, 5),
            Err(ProofError::BadSizes { .. })
        ));
    }

    #[test]
    fn frontier_from_nodes_round_trips() {
        let ls = leaves(77, 6);
        let mut f = Frontier::new();
        for l in &ls {
            f.push(*l);
        }
        let g = Frontier::from_nodes(77, &f.hashes()).expect("frontier");
        assert_eq!(f, g);
    }
}
