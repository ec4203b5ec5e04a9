//! Policy bundles kept in the blob store by digest, so that any recorded
//! decision can be re-evaluated later against the exact bundle that made it.

use glassbox_events::catalogue;
use glassbox_events::store::{AppendRequest, EventStore, NewEvent, StoreError};
use glassbox_events::{Actor, Digest};
use glassbox_platform::blob::{BlobError, BlobStore};
use glassbox_policies::Bundle;

#[derive(Debug, thiserror::Error)]
pub enum BundleStoreError {
    #[error("policy bundle: {0}")]
    Store(#[from] StoreError),
    #[error("policy bundle: {0}")]
    Blob(#[from] BlobError),
    #[error("policy bundle {digest}: {reason}")]
    Invalid { digest: String, reason: String },
}

fn names(digest: &Digest) -> (String, String) {
    (
        format!("policy-bundle-{}", digest.to_hex()),
        format!("policy-bundles/{}.json", digest.to_hex()),
    )
}

/// Stores `bundle` under its digest and records `policy.bundle_loaded` once
/// per digest (an idempotency key makes restarts and replicas record it once).
pub async fn keep(
    store: &EventStore,
    blobs: &BlobStore,
    bundle: &Bundle,
) -> Result<Digest, BundleStoreError> {
    let digest = bundle.digest();
    let (key_id, path) = names(&digest);
    let files: serde_json::Map<String, serde_json::Value> = bundle
        .files()
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                serde_json::Value::String(String::from_utf8_lossy(v).into_owned()),
            )
        })
        .collect();
    let content = serde_json::to_vec(&serde_json::json!({ "files": files })).map_err(|e| {
        BundleStoreError::Invalid {
            digest: digest.to_hex(),
            reason: e.to_string(),
        }
    })?;
    blobs.create_data_key(&key_id, "system").await?;
    blobs.put(&key_id, &path, &content).await?;
    let event = catalogue::PolicyBundleLoaded {
        bundle_digest: digest,
        blob_key: path,
        files: bundle.files().keys().cloned().collect(),
    };
    let e = NewEvent::typed("policy-bundles", &event).map_err(|e| BundleStoreError::Invalid {
        digest: digest.to_hex(),
        reason: e.to_string(),
    })?;
    let req = AppendRequest::new("system", Actor::system("policy-bundles"), vec![e]).idempotent(
        format!("policy.bundle_loaded:{}", digest.to_hex()),
        Digest::of(&content),
    );
    store.append(req).await?;
    Ok(digest)
}

/// Reads the bundle with `digest` back (and checks that it is that bundle).
pub async fn load(blobs: &BlobStore, digest: &Digest) -> Result<Bundle, BundleStoreError> {
    let (key_id, path) = names(digest);
    let bytes = blobs.get(&key_id, &path).await?;
    let invalid = |reason: String| BundleStoreError::Invalid {
        digest: digest.to_hex(),
        reason,
    };
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
    let files = v
        .get("files")
        .and_then(serde_json::Value::as_object)
        .ok_or_else(|| invalid("no files".into()))?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").as_bytes().to_vec()))
        .collect();
    let bundle = Bundle::from_files(files);
    if bundle.digest() != *digest {
        return Err(invalid("read back with a different digest".into()));
    }
    Ok(bundle)
}
