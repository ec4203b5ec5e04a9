//! Evidence bundles, offline: the format, the renderings and the verifier
//! (docs/evidence-bundle.md). The export lives with the database
//! (`glassbox-audit-query`); everything an auditor needs is here, with no
//! database, server or network dependency.
//!
//! Why this shape: an auditor receiving a filtered extract must be able to check
//! it without our database or network, and without seeing anything outside the
//! filter. Each record comes with an RFC 9162 inclusion proof against ONE signed
//! checkpoint, so a tenant's bundle proves membership of its records while
//! containing no other tenant's data; the manifest (filters, counts, file
//! digests, who exported it, when) is signed with the same key as the
//! checkpoint, and the tar is canonical, so no byte can change unnoticed.
//! Verification streams, keeping only 40 bytes per record (position and leaf
//! hash) between reading the records and their proofs.

use crate::canonical;
use crate::checkpoint::{Checkpoint, VerifierKey};
use crate::hash::Digest;
use crate::merkle;
use crate::record::Record;
use crate::tarball;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

pub const FORMAT: &str = "glassbox-evidence-bundle/1";
/// The first line of the signed note over the manifest's digest.
pub const MANIFEST_NOTE: &str = "glassbox evidence bundle manifest";
/// Files in a bundle, in the order they are packed.
pub const FILES: [&str; 7] = [
    "manifest.json",
    "manifest.sig",
    "checkpoint.txt",
    "records.jsonl",
    "proofs.jsonl",
    "records.csv",
    "records.ocsf.jsonl",
];
/// What to export (all optional; combined with AND).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filters {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The records' envelope `correlation_id` (one request, job or workflow run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_position: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_position: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
}

impl Filters {
    /// The filters as a bundle records them: times truncated to the
    /// microseconds records carry (so the database and an offline verifier
    /// compare the same instants), positions within the ledger's integer range.
    pub fn normalized(&self) -> Result<Filters, FilterError> {
        let max = crate::canonical::MAX_SAFE_INTEGER;
        for (name, v) in [
            ("from_position", self.from_position),
            ("to_position", self.to_position),
        ] {
            if v.is_some_and(|p| p > max) {
                return Err(FilterError(format!("{name}: at most {max}")));
            }
        }
        Ok(Filters {
            since: self.since.map(crate::record::truncate_to_micros),
            until: self.until.map(crate::record::truncate_to_micros),
            ..self.clone()
        })
    }
}

/// A filter no export may use (it names the member).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FilterError(pub String);

/// Why a bundle does not verify: the file and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {reason}")]
pub struct BundleFailure {
    pub file: String,
    pub reason: String,
}

fn fail(file: &str, reason: impl Into<String>) -> BundleFailure {
    BundleFailure {
        file: file.to_owned(),
        reason: reason.into(),
    }
}

/// What an export wrote / a verification checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BundleReport {
    /// SHA-256 of the whole bundle file (what `audit.exported` records).
    pub bundle_sha256: String,
    pub records: u64,
    pub tree_size: u64,
    pub root: String,
    pub first_position: Option<u64>,
    pub last_position: Option<u64>,
    pub exported_by: String,
    pub filters: Filters,
}

/// One CSV cell: a value a spreadsheet would take for a formula (first
/// character `=`, `+`, `-`, `@`, TAB or CR) gets a `'` in front; then a cell
/// holding `,`, `"`, CR or LF is quoted with `"` and its `"` doubled (RFC 4180).
pub fn csv_cell(v: &str) -> String {
    let mut f = String::with_capacity(v.len() + 3);
    if v.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        f.push('\'');
    }
    f.push_str(v);
    if f.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", f.replace('"', "\"\""))
    } else {
        f
    }
}

/// One CSV row: cells joined by `,`, ended by CRLF.
pub fn csv_row(fields: &[String]) -> String {
    let mut out = fields
        .iter()
        .map(|f| csv_cell(f))
        .collect::<Vec<_>>()
        .join(",");
    out.push_str("\r\n");
    out
}

pub const CSV_HEADER: [&str; 13] = [
    "position",
    "occurred_at",
    "tenant",
    "stream",
    "stream_version",
    "event_type",
    "actor_kind",
    "actor_id",
    "actor_app",
    "actor_agent",
    "auth_via",
    "correlation_id",
    "entry_hash",
];

fn name<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        _ => String::new(),
    }
}

/// The CSV rendering of one record (derived; the verifier re-derives it).
pub fn csv_line(r: &Record, entry_hash: &Digest) -> String {
    csv_row(&[
        r.position.to_string(),
        crate::record::format_timestamp(&r.occurred_at),
        r.tenant.clone(),
        r.stream.clone(),
        r.stream_version.to_string(),
        r.event_type.clone(),
        name(&r.actor.kind),
        r.actor.id.clone(),
        r.actor.app.clone().unwrap_or_default(),
        r.actor.agent.clone().unwrap_or_default(),
        name(&r.actor.via),
        r.correlation_id.clone(),
        entry_hash.to_hex(),
    ])
}

/// The OCSF "API Activity" (class 6003) rendering of one record, for SIEMs.
pub fn ocsf_line(r: &Record, entry_hash: &Digest) -> String {
    let v = json!({
        "class_uid": 6003,
        "class_name": "API Activity",
        "category_uid": 6,
        "category_name": "Application Activity",
        "activity_id": 99,
        "activity_name": r.event_type,
        "type_uid": 600399,
        "severity_id": 1,
        "status_id": 1,
        "time": r.occurred_at.timestamp_millis(),
        "actor": {
            "user": {"uid": r.actor.id, "type": name(&r.actor.kind)},
            "app_name": r.actor.app,
            "authorizations": [{"decision": name(&r.actor.via)}],
        },
        "api": {"operation": r.event_type, "service": {"name": "glassbox"}},
        "metadata": {
            "version": "1.1.0",
            "product": {"name": "Glassbox", "vendor_name": "Glassbox"},
            "uid": r.event_id.to_string(),
            "correlation_uid": r.correlation_id,
            "sequence": r.position,
            "tenant_uid": r.tenant,
        },
        "unmapped": {
            "stream": r.stream,
            "stream_version": r.stream_version,
            "agent": r.actor.agent,
            "entry_hash": entry_hash.to_hex(),
        },
    });
    // Canonical (RFC 8785) bytes: the same as serde_json's compact form for
    // these values, but pinned by a standard rather than a build feature.
    let mut s = canonical::to_canonical_bytes(&v)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    s.push('\n');
    s
}

/// One line of `proofs.jsonl` (canonical JSON, without the newline).
pub fn proof_line(position: u64, proof: &[Digest]) -> Vec<u8> {
    let v = json!({
        "position": position,
        "leaf_index": position - 1,
        "proof": proof.iter().map(Digest::to_hex).collect::<Vec<_>>(),
    });
    canonical::to_canonical_bytes(&v).unwrap_or_default()
}

/// SHA-256 and size of a file, read in 64 KiB pieces.
pub fn digest_file(p: &Path) -> std::io::Result<(Digest, u64)> {
    let mut f = std::fs::File::open(p)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        ctx.update(&buf[..k]);
        n += k as u64;
    }
    let d = Digest::from_slice(ctx.finish().as_ref()).unwrap_or(Digest::ZERO);
    Ok((d, n))
}

/// Hashes what passes through while it is read.
struct Hashing<R> {
    inner: R,
    ctx: ring::digest::Context,
    bytes: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.ctx.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

fn hashing<R: Read>(inner: R) -> Hashing<R> {
    Hashing {
        inner,
        ctx: ring::digest::Context::new(&ring::digest::SHA256),
        bytes: 0,
    }
}

impl<R> Hashing<R> {
    fn finish(self) -> (String, u64) {
        (hex::encode(self.ctx.finish().as_ref()), self.bytes)
    }
}

/// Verifies a bundle offline: the manifest's signature, the checkpoint's
/// signature, every file's digest, every record's canonical form and hash,
/// every inclusion proof, the filters, the counts and both renderings (re-derived
/// from the records). Needs no database and no network.
pub fn verify_bundle(path: &Path, key: &VerifierKey) -> Result<BundleReport, BundleFailure> {
    let file =
        std::fs::File::open(path).map_err(|e| fail(&path.display().to_string(), e.to_string()))?;
    // The whole file is hashed as it is read: its SHA-256 is what
    // `audit.exported` recorded, and the report shows it.
    let mut whole = hashing(BufReader::new(file));
    let mut tar = tarball::Reader::new(&mut whole);
    let mut manifest: Option<(Vec<u8>, Value)> = None;
    let mut checkpoint: Option<Checkpoint> = None;
    let mut leaves: Vec<(u64, Digest)> = Vec::new();
    let (mut csv_ctx, mut ocsf_ctx) = (
        ring::digest::Context::new(&ring::digest::SHA256),
        ring::digest::Context::new(&ring::digest::SHA256),
    );
    csv_ctx.update(csv_row(&CSV_HEADER.map(str::to_owned)).as_bytes());
    let mut digests: BTreeMap<String, (String, u64)> = BTreeMap::new();
    let mut proofs_checked = 0u64;
    for name in FILES {
        let name = name.to_owned();
        tar.next_member(&name)
            .map_err(|e| fail("bundle", e.to_string()))?;
        let mut r = hashing(&mut tar);
        match name.as_str() {
            "manifest.json" => {
                let mut b = Vec::new();
                r.read_to_end(&mut b)
                    .map_err(|e| fail(&name, e.to_string()))?;
                let v: Value = serde_json::from_slice(&b)
                    .map_err(|e| fail(&name, format!("not JSON: {e}")))?;
                if canonical::to_canonical_bytes(&v).ok().as_deref() != Some(b.as_slice()) {
                    return Err(fail(&name, "not in canonical form"));
                }
                if v["format"] != FORMAT {
                    return Err(fail(&name, format!("format is not {FORMAT}")));
                }
                manifest_shape(&v).map_err(|why| fail(&name, why))?;
                manifest = Some((b, v));
            }
            "manifest.sig" => {
                let mut t = String::new();
                r.read_to_string(&mut t)
                    .map_err(|e| fail(&name, e.to_string()))?;
                let body = key
                    .open_text(&t)
                    .map_err(|e| fail(&name, format!("signature does not verify: {e}")))?;
                single_signature(&t, key).map_err(|why| fail(&name, why))?;
                let (bytes, _) = manifest
                    .as_ref()
                    .ok_or_else(|| fail(&name, "no manifest before it"))?;
                let want = format!("{MANIFEST_NOTE}\n{}\n", Digest::of(bytes).to_hex());
                if body != want {
                    return Err(fail("manifest.json", "does not match its signed digest"));
                }
            }
            "checkpoint.txt" => {
                let mut t = String::new();
                r.read_to_string(&mut t)
                    .map_err(|e| fail(&name, e.to_string()))?;
                let cp = key
                    .open(&t)
                    .map_err(|e| fail(&name, format!("signature does not verify: {e}")))?;
                single_signature(&t, key).map_err(|why| fail(&name, why))?;
                let (_, m) = manifest
                    .as_ref()
                    .ok_or_else(|| fail(&name, "no manifest before it"))?;
                if m["checkpoint"]["tree_size"] != cp.size
                    || m["checkpoint"]["root"] != cp.root.to_hex()
                    || m["checkpoint"]["origin"] != cp.origin.as_str()
                {
                    return Err(fail(&name, "does not match the manifest's checkpoint"));
                }
                checkpoint = Some(cp);
            }
            "records.jsonl" => {
                let (_, m) = manifest
                    .as_ref()
                    .ok_or_else(|| fail(&name, "no manifest before it"))?;
                let filters: Filters = serde_json::from_value(m["filters"].clone())
                    .map_err(|e| fail("manifest.json", format!("filters: {e}")))?;
                // Exactly as an export writes them (UTC, whole microseconds,
                // positions within the ledger's integers): one spelling per filter.
                let written = filters
                    .normalized()
                    .ok()
                    .and_then(|f| serde_json::to_value(f).ok());
                if written.as_ref() != Some(&m["filters"]) {
                    return Err(fail(
                        "manifest.json",
                        "filters: not in the form an export writes them",
                    ));
                }
                let cp = checkpoint
                    .as_ref()
                    .ok_or_else(|| fail(&name, "no checkpoint before it"))?;
                let mut reader = BufReader::new(&mut r);
                let mut line = Vec::new();
                let mut n = 0u64;
                loop {
                    line.clear();
                    let k = reader
                        .read_until(b'\n', &mut line)
                        .map_err(|e| fail(&name, e.to_string()))?;
                    if k == 0 {
                        break;
                    }
                    n += 1;
                    if line.pop() != Some(b'\n') {
                        return Err(fail(&name, format!("line {n} does not end with a newline")));
                    }
                    let rec = Record::from_canonical(&line)
                        .map_err(|e| fail(&name, format!("line {n}: {e}")))?;
                    let entry_hash = Digest::of(&line);
                    if let Some((prev, _)) = leaves.last()
                        && rec.position <= *prev
                    {
                        return Err(fail(
                            &name,
                            format!("line {n}: position {} is not after {prev}", rec.position),
                        ));
                    }
                    if rec.position > cp.size {
                        return Err(fail(
                            &name,
                            format!(
                                "line {n}: position {} is beyond the checkpoint",
                                rec.position
                            ),
                        ));
                    }
                    if let Err(why) = matches(&filters, &rec) {
                        return Err(fail(
                            &name,
                            format!(
                                "line {n}: position {} is outside the filter ({why})",
                                rec.position
                            ),
                        ));
                    }
                    leaves.push((rec.position, merkle::leaf_hash(&line)));
                    csv_ctx.update(csv_line(&rec, &entry_hash).as_bytes());
                    ocsf_ctx.update(ocsf_line(&rec, &entry_hash).as_bytes());
                }
            }
            "proofs.jsonl" => {
                let cp = checkpoint
                    .as_ref()
                    .ok_or_else(|| fail(&name, "no checkpoint before it"))?;
                let mut reader = BufReader::new(&mut r);
                let mut line = Vec::new();
                for i in 0usize.. {
                    line.clear();
                    let k = reader
                        .read_until(b'\n', &mut line)
                        .map_err(|e| fail(&name, e.to_string()))?;
                    if k == 0 {
                        break;
                    }
                    if line.pop() != Some(b'\n') {
                        return Err(fail(
                            &name,
                            format!("line {} does not end with a newline", i + 1),
                        ));
                    }
                    let v: Value = serde_json::from_slice(&line)
                        .map_err(|e| fail(&name, format!("line {}: {e}", i + 1)))?;
                    if canonical::to_canonical_bytes(&v).ok().as_deref() != Some(line.as_slice())
                        || v.as_object().map(|o| o.len()) != Some(3)
                    {
                        return Err(fail(
                            &name,
                            format!(
                                "line {}: not exactly {{leaf_index, position, proof}} in canonical form",
                                i + 1
                            ),
                        ));
                    }
                    let Some(&(position, leaf)) = leaves.get(i) else {
                        return Err(fail(
                            &name,
                            format!("line {}: more proofs than records", i + 1),
                        ));
                    };
                    if v["position"] != position || v["leaf_index"] != position - 1 {
                        return Err(fail(
                            &name,
                            format!("line {}: not the proof of position {position}", i + 1),
                        ));
                    }
                    let path: Option<Vec<Digest>> = v["proof"].as_array().map(|a| {
                        a.iter()
                            .filter_map(|h| h.as_str().and_then(Digest::from_hex))
                            .collect()
                    });
                    let path =
                        path.ok_or_else(|| fail(&name, format!("line {}: no proof", i + 1)))?;
                    if path.len() != v["proof"].as_array().map_or(0, Vec::len) {
                        return Err(fail(
                            &name,
                            format!("line {}: a proof hash is not 64 hex digits", i + 1),
                        ));
                    }
                    merkle::verify_inclusion(position - 1, cp.size, &leaf, &path, &cp.root)
                        .map_err(|e| {
                            fail(
                                &name,
                                format!(
                                    "line {}: record {position} is not in the signed tree: {e}",
                                    i + 1
                                ),
                            )
                        })?;
                    proofs_checked += 1;
                }
                if proofs_checked != leaves.len() as u64 {
                    return Err(fail(
                        &name,
                        format!("{} proofs for {} records", proofs_checked, leaves.len()),
                    ));
                }
            }
            _ => {}
        }
        std::io::copy(&mut r, &mut std::io::sink()).map_err(|e| fail(&name, e.to_string()))?;
        digests.insert(name, r.finish());
    }
    tar.finish().map_err(|e| fail("bundle", e.to_string()))?;
    let (bundle_sha256, _) = whole.finish();
    let (_, m) = manifest.ok_or_else(|| fail("manifest.json", "missing"))?;
    let cp = checkpoint.ok_or_else(|| fail("checkpoint.txt", "missing"))?;
    for n in [
        "checkpoint.txt",
        "records.jsonl",
        "proofs.jsonl",
        "records.csv",
        "records.ocsf.jsonl",
    ] {
        let (d, size) = digests.get(n).cloned().unwrap_or_default();
        if m["files"][n]["sha256"] != d.as_str() || m["files"][n]["bytes"] != size {
            return Err(fail(n, "digest or size does not match the manifest"));
        }
    }
    for (n, ctx) in [("records.csv", csv_ctx), ("records.ocsf.jsonl", ocsf_ctx)] {
        if digests.get(n).map(|(d, _)| d.as_str())
            != Some(hex::encode(ctx.finish().as_ref()).as_str())
        {
            return Err(fail(n, "is not the rendering of records.jsonl"));
        }
    }
    if m["record_count"] != leaves.len() as u64 {
        return Err(fail(
            "manifest.json",
            "record_count does not match records.jsonl",
        ));
    }
    let first = leaves.first().map(|l| l.0);
    let last = leaves.last().map(|l| l.0);
    if m["first_position"] != serde_json::to_value(first).unwrap_or(Value::Null)
        || m["last_position"] != serde_json::to_value(last).unwrap_or(Value::Null)
    {
        return Err(fail(
            "manifest.json",
            "first_position or last_position does not match records.jsonl",
        ));
    }
    if m["verifier_key_name"] != key.name.as_str() {
        return Err(fail(
            "manifest.json",
            "verifier_key_name is not the name of the key it was verified with",
        ));
    }
    let filters: Filters = serde_json::from_value(m["filters"].clone()).unwrap_or_default();
    Ok(BundleReport {
        bundle_sha256,
        records: leaves.len() as u64,
        tree_size: cp.size,
        root: cp.root.to_hex(),
        first_position: first,
        last_position: last,
        exported_by: m["exported_by"].as_str().unwrap_or("").to_owned(),
        filters,
    })
}

/// A signed note exactly as the exporter writes it: the body, a blank line and
/// ONE signature line, by this key, `\n`-terminated — so that no other bytes
/// (another signature, CRLF) can be added to a bundle that still verifies.
fn single_signature(note: &str, key: &VerifierKey) -> Result<(), String> {
    let sigs = note
        .split_once("\n\n")
        .map(|(_, s)| s)
        .ok_or("not a signed note")?;
    let one_line = sigs.ends_with('\n') && sigs.matches('\n').count() == 1;
    if !one_line || note.contains('\r') || !sigs.starts_with(&format!("\u{2014} {} ", key.name)) {
        return Err("must hold exactly one signature line, by the verifier key, and no CR".into());
    }
    Ok(())
}

/// The manifest holds exactly the members the format defines.
fn manifest_shape(m: &Value) -> Result<(), String> {
    let keys = |v: &Value| -> Vec<String> {
        v.as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    let want = [
        "checkpoint",
        "exported_at",
        "exported_by",
        "files",
        "filters",
        "first_position",
        "format",
        "last_position",
        "record_count",
        "verifier_key_name",
    ];
    if keys(m) != want {
        return Err(format!("members must be exactly {}", want.join(", ")));
    }
    if keys(&m["checkpoint"]) != ["origin", "root", "tree_size"] {
        return Err("checkpoint must be exactly {origin, root, tree_size}".into());
    }
    let mut parts = FILES[2..].to_vec();
    parts.sort_unstable();
    if keys(&m["files"]) != parts {
        return Err(format!("files must name exactly {}", parts.join(", ")));
    }
    for p in parts {
        if keys(&m["files"][p]) != ["bytes", "sha256"] {
            return Err(format!("files.{p} must be exactly {{bytes, sha256}}"));
        }
    }
    if !m["exported_at"].is_string() || !m["exported_by"].is_string() {
        return Err("exported_at and exported_by must be strings".into());
    }
    Ok(())
}

fn matches(f: &Filters, r: &Record) -> Result<(), &'static str> {
    let ok = |cond: bool, why| if cond { Ok(()) } else { Err(why) };
    ok(f.tenant.as_ref().is_none_or(|t| *t == r.tenant), "tenant")?;
    ok(f.stream.as_ref().is_none_or(|s| *s == r.stream), "stream")?;
    ok(
        f.event_type.as_ref().is_none_or(|t| *t == r.event_type),
        "event type",
    )?;
    ok(f.actor.as_ref().is_none_or(|a| *a == r.actor.id), "actor")?;
    ok(
        f.correlation_id
            .as_ref()
            .is_none_or(|c| *c == r.correlation_id),
        "correlation_id",
    )?;
    ok(
        f.from_position.is_none_or(|p| r.position >= p),
        "from_position",
    )?;
    ok(f.to_position.is_none_or(|p| r.position <= p), "to_position")?;
    ok(f.since.is_none_or(|t| r.occurred_at >= t), "since")?;
    ok(f.until.is_none_or(|t| r.occurred_at < t), "until")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::SigningKey;
    use crate::merkle::reference;
    use crate::record::tests::sample;

    /// A bundle of the records at `kept` (1-based positions) out of a ledger
    /// of `ledger`, for `filters`, built and signed exactly as an export
    /// writes it (but without a database).
    fn bundle(
        key: &SigningKey,
        ledger: &[Record],
        kept: &[u64],
        filters: &Filters,
        name: &str,
    ) -> std::path::PathBuf {
        let canonical: Vec<Vec<u8>> = ledger
            .iter()
            .map(|r| r.canonical_bytes().expect("canonical"))
            .collect();
        let leaves: Vec<Digest> = canonical.iter().map(|b| merkle::leaf_hash(b)).collect();
        let cp = Checkpoint {
            origin: "glassbox.test/ledger".into(),
            size: ledger.len() as u64,
            root: reference::mth(&leaves),
        };
        let (mut records, mut proofs, mut ocsf) = (Vec::new(), Vec::new(), String::new());
        let mut csv = csv_row(&CSV_HEADER.map(str::to_owned));
        for &p in kept {
            let i = (p - 1) as usize;
            records.extend_from_slice(&canonical[i]);
            records.push(b'\n');
            proofs.extend(proof_line(p, &reference::path(i, &leaves)));
            proofs.push(b'\n');
            let entry_hash = Digest::of(&canonical[i]);
            csv.push_str(&csv_line(&ledger[i], &entry_hash));
            ocsf.push_str(&ocsf_line(&ledger[i], &entry_hash));
        }
        let parts: [(&str, Vec<u8>); 5] = [
            ("checkpoint.txt", key.sign(&cp).into_bytes()),
            ("records.jsonl", records),
            ("proofs.jsonl", proofs),
            ("records.csv", csv.into_bytes()),
            ("records.ocsf.jsonl", ocsf.into_bytes()),
        ];
        let files: serde_json::Map<String, Value> = parts
            .iter()
            .map(|(n, b)| {
                let v = json!({"sha256": Digest::of(b).to_hex(), "bytes": b.len()});
                ((*n).to_owned(), v)
            })
            .collect();
        let manifest = json!({
            "format": FORMAT,
            "exported_at": "2026-11-28T12:00:00.000000Z",
            "exported_by": "auditor",
            "filters": filters,
            "checkpoint": {"origin": cp.origin, "tree_size": cp.size, "root": cp.root.to_hex()},
            "verifier_key_name": key.name(),
            "record_count": kept.len(),
            "first_position": kept.first(),
            "last_position": kept.last(),
            "files": files,
        });
        let manifest = canonical::to_canonical_bytes(&manifest).expect("manifest");
        let sig = key.sign_text(&format!(
            "{MANIFEST_NOTE}\n{}\n",
            Digest::of(&manifest).to_hex()
        ));
        let mut w = tarball::Writer::new(Vec::new());
        for (n, b) in [
            ("manifest.json", manifest),
            ("manifest.sig", sig.into_bytes()),
        ]
        .into_iter()
        .chain(parts)
        {
            w.append(n, b.len() as u64, b.as_slice()).expect("append");
        }
        let dir = std::env::temp_dir().join(format!("gb-bundle-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join(name);
        std::fs::write(&path, w.finish().expect("tar")).expect("write");
        path
    }

    /// Positions 1..=4; records 1 and 3 belong to run `run-1`, 2 and 4 to `run-2`.
    fn ledger() -> Vec<Record> {
        let mut prev = Digest::ZERO;
        (1..=4u64)
            .map(|p| {
                let mut r = sample(p, prev);
                r.correlation_id = if p % 2 == 1 { "run-1" } else { "run-2" }.into();
                prev = Digest::of(&r.canonical_bytes().expect("canonical"));
                r
            })
            .collect()
    }

    #[test]
    fn a_correlation_filtered_bundle_holds_only_records_of_that_correlation() {
        let key = SigningKey::generate("glassbox.test/ledger").expect("key");
        let ledger = ledger();
        let run1 = Filters {
            correlation_id: Some("run-1".into()),
            ..Filters::default()
        };
        // The records of run-1 only: verifies, and the filter is reported.
        let good = bundle(&key, &ledger, &[1, 3], &run1, "good.tar");
        let report = verify_bundle(&good, &key.verifier()).expect("verifies");
        assert_eq!(report.records, 2);
        assert_eq!(report.filters, run1);
        // The manifest names the member `correlation_id`.
        let bytes = std::fs::read(&good).expect("read");
        assert!(
            String::from_utf8_lossy(&bytes).contains(r#""filters":{"correlation_id":"run-1"}"#)
        );
        // A record of run-2 in a bundle that says run-1: refused, naming the filter.
        let bad = bundle(&key, &ledger, &[1, 2, 3], &run1, "bad.tar");
        let err = verify_bundle(&bad, &key.verifier()).expect_err("run-2 in a run-1 bundle");
        assert_eq!(err.file, "records.jsonl", "{err}");
        assert_eq!(
            err.reason,
            "line 2: position 2 is outside the filter (correlation_id)"
        );
        // Checked after the actor (the documented order), and with it (AND).
        let both = Filters {
            actor: Some("someone-else".into()),
            ..run1.clone()
        };
        let other = bundle(&key, &ledger, &[1], &both, "both.tar");
        let err = verify_bundle(&other, &key.verifier()).expect_err("another actor");
        assert!(err.reason.ends_with("outside the filter (actor)"), "{err}");
        for p in [good, bad, other] {
            if let Some(dir) = p.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}
