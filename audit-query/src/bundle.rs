//! Evidence bundle export: the matching records from the audit index, each
//! proven against the latest checkpoint the exporting key signed, rendered and
//! packed as docs/evidence-bundle.md says. The format, the renderings and the
//! offline verifier live in `glassbox-verify` (re-exported here), so the
//! auditor's tool needs nothing of this crate.
//!
//! Export streams: records are read a page at a time and written to temporary
//! files, which are then packed; memory stays bounded whatever the size.

pub use glassbox_verify::bundle::*;

use chrono::Utc;
use glassbox_events::Digest;
use glassbox_events::canonical;
use glassbox_events::checkpoint::SigningKey;
use glassbox_events::store::{EventStore, StoreError};
use glassbox_verify::tarball;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::Path;

const PAGE: i64 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("export: {0}")]
    Store(#[from] StoreError),
    #[error("export: {step}: database error: {source}")]
    Database {
        step: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("export: {step}: {path}: {source}")]
    Io {
        step: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("export: {0}")]
    NotReady(String),
    #[error("export: filter {0}")]
    InvalidFilter(String),
}

impl From<FilterError> for BundleError {
    fn from(e: FilterError) -> BundleError {
        BundleError::InvalidFilter(e.0)
    }
}

fn io<'p>(step: &'static str, path: &'p Path) -> impl FnOnce(std::io::Error) -> BundleError + 'p {
    move |source| BundleError::Io {
        step,
        path: path.display().to_string(),
        source,
    }
}

/// Writes an evidence bundle for `filters` to `out`, proving every record
/// against the latest signed checkpoint. Records after that checkpoint are not
/// included (the manifest says which tree size the bundle covers).
pub async fn export(
    store: &EventStore,
    key: &SigningKey,
    filters: &Filters,
    exported_by: &str,
    out: &Path,
) -> Result<BundleReport, BundleError> {
    let filters = &filters.normalized()?;
    let pool = store.pool();
    let checkpoints = store.checkpoints().await?;
    // The newest checkpoint this very key signed (a rotated key of the same
    // name would give a bundle that does not verify).
    let verifier = key.verifier();
    let latest = checkpoints
        .iter()
        .filter(|c| c.key_name == key.name() && verifier.open(&c.note).is_ok())
        .max_by_key(|c| c.checkpoint.size)
        .ok_or_else(|| BundleError::NotReady("no checkpoint signed with this key yet".into()))?;
    let cp = latest.checkpoint.clone();
    let projected = glassbox_projector::position(pool)
        .await
        .map_err(|e| BundleError::NotReady(format!("the audit index position: {e}")))?;
    if projected < cp.size {
        return Err(BundleError::NotReady(format!(
            "the audit index is at {projected} but the checkpoint covers {}; try again shortly",
            cp.size
        )));
    }
    let dir = out.with_extension("parts");
    std::fs::create_dir_all(&dir).map_err(io("create work directory", &dir))?;
    let open = |n: &str| {
        let p = dir.join(n);
        std::fs::File::create(&p)
            .map(BufWriter::new)
            .map_err(|source| BundleError::Io {
                step: "create part",
                path: p.display().to_string(),
                source,
            })
    };
    let (mut records, mut proofs, mut csv, mut ocsf) = (
        open("records.jsonl")?,
        open("proofs.jsonl")?,
        open("records.csv")?,
        open("records.ocsf.jsonl")?,
    );
    let w = |f: &mut BufWriter<std::fs::File>, b: &[u8]| {
        f.write_all(b).map_err(|source| BundleError::Io {
            step: "write part",
            path: dir.display().to_string(),
            source,
        })
    };
    w(&mut csv, csv_row(&CSV_HEADER.map(str::to_owned)).as_bytes())?;
    let mut after: i64 = filters
        .from_position
        .map_or(0, |p| p.saturating_sub(1) as i64);
    let upto = filters.to_position.map_or(cp.size, |t| t.min(cp.size)) as i64;
    let (mut count, mut first, mut last) = (0u64, None, None);
    loop {
        let page_filters = Filters {
            to_position: Some(upto as u64),
            ..filters.clone()
        };
        let positions = glassbox_projector::queries::audit_positions(
            pool,
            &page_filters,
            true,
            Some(after),
            PAGE,
        )
        .await
        .map_err(|e| BundleError::NotReady(format!("search the audit index: {e}")))?;
        let Some(&page_last) = positions.last() else {
            break;
        };
        after = page_last;
        let wanted: Vec<u64> = positions.iter().map(|p| *p as u64).collect();
        let page = store.records_at(&wanted).await?;
        let found: Vec<u64> = page.iter().map(|s| s.record.position).collect();
        let page_proofs = store.inclusion_proofs(&found, cp.size).await?;
        for (s, proof) in page.iter().zip(page_proofs) {
            let p = s.record.position;
            w(&mut records, &s.canonical)?;
            w(&mut records, b"\n")?;
            w(&mut proofs, &proof_line(p, &proof))?;
            w(&mut proofs, b"\n")?;
            w(&mut csv, csv_line(&s.record, &s.entry_hash).as_bytes())?;
            w(&mut ocsf, ocsf_line(&s.record, &s.entry_hash).as_bytes())?;
            count += 1;
            first.get_or_insert(p);
            last = Some(p);
        }
    }
    for f in [&mut records, &mut proofs, &mut csv, &mut ocsf] {
        f.flush().map_err(io("flush part", &dir))?;
    }
    drop((records, proofs, csv, ocsf));
    std::fs::write(dir.join("checkpoint.txt"), &latest.note)
        .map_err(io("write checkpoint", &dir))?;
    let mut files = BTreeMap::new();
    for n in [
        "checkpoint.txt",
        "records.jsonl",
        "proofs.jsonl",
        "records.csv",
        "records.ocsf.jsonl",
    ] {
        let p = dir.join(n);
        let (digest, size) = digest_file(&p).map_err(io("digest part", &p))?;
        files.insert(
            n.to_owned(),
            json!({"sha256": digest.to_hex(), "bytes": size}),
        );
    }
    let exported_at = glassbox_events::record::format_timestamp(&Utc::now());
    let manifest = json!({
        "format": FORMAT,
        "exported_at": exported_at,
        "exported_by": exported_by,
        "filters": filters,
        "checkpoint": {"origin": cp.origin, "tree_size": cp.size, "root": cp.root.to_hex()},
        "verifier_key_name": key.name(),
        "record_count": count,
        "first_position": first,
        "last_position": last,
        "files": files,
    });
    let manifest_bytes = canonical::to_canonical_bytes(&manifest)
        .map_err(|e| BundleError::NotReady(format!("manifest: {e}")))?;
    std::fs::write(dir.join("manifest.json"), &manifest_bytes)
        .map_err(io("write manifest", &dir))?;
    let sig = key.sign_text(&format!(
        "{MANIFEST_NOTE}\n{}\n",
        Digest::of(&manifest_bytes).to_hex()
    ));
    std::fs::write(dir.join("manifest.sig"), sig).map_err(io("write manifest signature", &dir))?;
    let file = std::fs::File::create(out).map_err(io("create bundle", out))?;
    let mut tar = tarball::Writer::new(BufWriter::new(file));
    let pack = |e: tarball::TarError| BundleError::Io {
        step: "pack",
        path: out.display().to_string(),
        source: std::io::Error::other(e.to_string()),
    };
    for n in FILES {
        let p = dir.join(n);
        let f = std::fs::File::open(&p).map_err(io("pack", &p))?;
        let size = f.metadata().map_err(io("pack", &p))?.len();
        tar.append(n, size, f).map_err(pack)?;
    }
    tar.finish().map_err(pack)?;
    let (bundle_digest, _) = digest_file(out).map_err(io("digest bundle", out))?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(BundleReport {
        bundle_sha256: bundle_digest.to_hex(),
        records: count,
        tree_size: cp.size,
        root: cp.root.to_hex(),
        first_position: first,
        last_position: last,
        exported_by: exported_by.to_owned(),
        filters: filters.clone(),
    })
}

/// [`export`], then records the export in the ledger (`audit.exported` with the
/// query, the bundle's SHA-256 and the record count), attributed to `actor`.
pub async fn export_recorded(
    store: &EventStore,
    key: &SigningKey,
    filters: &Filters,
    actor: glassbox_events::Actor,
    out: &Path,
) -> Result<(BundleReport, Digest), BundleError> {
    let report = export(store, key, filters, &actor.id, out).await?;
    let (digest, _) = digest_file(out).map_err(io("digest bundle", out))?;
    let filters = &report.filters;
    let mut query = match serde_json::to_value(filters) {
        Ok(Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    if filters.tenant.is_none() {
        // Recorded as what it is: an export of every tenant.
        query.insert("tenant".into(), "*".into());
    }
    let event = glassbox_events::catalogue::AuditExported {
        query,
        bundle_digest: digest,
        record_count: report.records,
    };
    let tenant = filters.tenant.clone().unwrap_or_else(|| "system".into());
    let e = glassbox_events::store::NewEvent::typed(format!("audit-{tenant}"), &event)
        .map_err(|e| BundleError::NotReady(e.to_string()))?;
    store
        .append(glassbox_events::store::AppendRequest::new(
            tenant,
            actor,
            vec![e],
        ))
        .await?;
    Ok((report, digest))
}
