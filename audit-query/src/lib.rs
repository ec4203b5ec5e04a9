//! # glassbox-audit-query — what compliance and security teams come for
//!
//! [`bundle`]: evidence bundles — a filtered extract of the ledger that proves,
//! offline and without revealing anything outside the filter, that each of its
//! records is in the ledger (the format and its offline verifier are in
//! `glassbox-verify`);
//! [`search`]: audit search; [`replay`]: a stream at a point in time;
//! [`policy_bundles`]: policy bundles kept by digest.

pub mod bundle;
pub mod policy_bundles;
pub mod replay;
pub mod search;
