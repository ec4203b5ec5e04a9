//! The metric names that deploy/monitoring's alert rules and dashboard query
//! (shared by the monitoring test and the end-to-end Prometheus test).

use std::collections::BTreeSet;
use std::path::Path;

/// Every `glassbox_…` and `http_server_…` series name in `text`, with the
/// histogram suffixes kept (they are real series names in Prometheus).
pub fn referenced(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        let starts = rest.starts_with("glassbox_") || rest.starts_with("http_server_");
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if starts && boundary {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            out.insert(rest[..end].to_owned());
            i += end;
        } else {
            i += 1;
        }
    }
    out
}

/// The names the alert rules and the dashboard use.
pub fn monitoring() -> BTreeSet<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/monitoring");
    let mut all = BTreeSet::new();
    for f in ["alerts.yml", "grafana-dashboard.json"] {
        let text = std::fs::read_to_string(dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        all.extend(referenced(&text));
    }
    all
}
