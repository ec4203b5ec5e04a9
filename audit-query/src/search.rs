//! Audit search: records matching filters, newest or oldest first, with their
//! positions and entry hashes, cursor-paginated by position (keyset, so pages
//! never repeat or skip a record even while the ledger grows).
//!
//! The filters run on the projector's audit index; the records themselves are
//! read from the ledger, so what is returned is always the stored bytes.

use crate::bundle::Filters;
use glassbox_domain::Cursor;
use glassbox_events::store::{EventStore, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    #[default]
    Desc,
    Asc,
}

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("search: {0}")]
    Invalid(String),
    #[error("search: {0}")]
    Query(String),
    #[error("search: {0}")]
    Store(#[from] StoreError),
}

/// One page of results.
#[derive(Debug, Clone, Serialize)]
pub struct Page {
    pub events: Vec<Value>,
    pub next_cursor: Option<Cursor>,
}

/// Searches with `filters` (whose `tenant`, when set, the caller is entitled
/// to — the HTTP layer decides that), `limit` 1..=500.
pub async fn search(
    store: &EventStore,
    filters: &Filters,
    order: Order,
    limit: u64,
    cursor: Option<Cursor>,
) -> Result<Page, SearchError> {
    if !(1..=500).contains(&limit) {
        return Err(SearchError::Invalid("limit: between 1 and 500".into()));
    }
    let after = cursor.map(|c| c.position() as i64);
    let positions = glassbox_projector::queries::audit_positions(
        store.pool(),
        filters,
        order == Order::Asc,
        after,
        limit as i64 + 1,
    )
    .await
    .map_err(|e| SearchError::Query(e.to_string()))?;
    let more = positions.len() as u64 > limit;
    let page: Vec<u64> = positions
        .iter()
        .take(limit as usize)
        .map(|p| *p as u64)
        .collect();
    let mut records = store.records_at(&page).await?;
    if order == Order::Desc {
        records.reverse();
    }
    let events = records
        .iter()
        .map(|s| {
            json!({
                "position": s.record.position,
                "entry_hash": s.entry_hash.to_hex(),
                "record": serde_json::from_slice::<Value>(&s.canonical).unwrap_or(Value::Null),
            })
        })
        .collect();
    Ok(Page {
        events,
        next_cursor: if more {
            page.last().map(|p| Cursor::at(*p))
        } else {
            None
        },
    })
}
