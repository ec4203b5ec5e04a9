//! Boundaries enforced, not promised.
//!
//! - The domain core (`glassbox-domain`) and the auditor's verifier
//!   (`glassbox-verify`) are pure: their dependency graphs hold no database
//!   driver, async runtime, HTTP stack or Glassbox service crate. The image
//!   builder (`glassbox-images`) does blocking file and process work only: the
//!   same holds for it, so a data-plane node can build and verify images
//!   without any service code.
//! - SQL on `ledger.*` tables lives only in the events store
//!   (`glassbox-events`), SQL on `projections.*` only in the projector
//!   (`glassbox-projector`): every other crate calls their functions.
//! - Names cross crates as items: the NOTIFY channels, job stream names and
//!   job statuses are spelled once, where they are defined.
//!
//! Production code (`src/`) is checked; tests may look at tables directly.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `cargo metadata` for this machine's platform (read once).
fn metadata() -> &'static Value {
    static META: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    META.get_or_init(|| {
        let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
        let version = std::process::Command::new(rustc)
            .arg("-vV")
            .output()
            .expect("rustc -vV");
        let host = String::from_utf8_lossy(&version.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
            .expect("host triple");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = std::process::Command::new(cargo)
            .args([
                "metadata",
                "--format-version",
                "1",
                "--locked",
                "--filter-platform",
            ])
            .arg(&host)
            .current_dir(workspace_root())
            .output()
            .expect("cargo metadata");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("metadata json")
    })
}

/// Package names in the normal (non-dev, non-build) dependency closure of `root`.
fn closure(meta: &Value, root: &str) -> BTreeSet<String> {
    let names: BTreeMap<&str, &str> = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p["name"].as_str()?)))
        .collect();
    let nodes: BTreeMap<&str, &Value> = meta["resolve"]["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| Some((n["id"].as_str()?, n)))
        .collect();
    let start = names
        .iter()
        .find(|(_, n)| **n == root)
        .map(|(id, _)| *id)
        .unwrap_or_else(|| panic!("{root} is not in the workspace"));
    let mut seen = BTreeSet::new();
    let mut todo = vec![start];
    while let Some(id) = todo.pop() {
        if !seen.insert(id) {
            continue;
        }
        for dep in nodes[id]["deps"].as_array().into_iter().flatten() {
            let normal = dep["dep_kinds"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|k| k["kind"].is_null());
            if normal && let Some(d) = dep["pkg"].as_str() {
                todo.push(d);
            }
        }
    }
    seen.into_iter()
        .filter(|id| *id != start)
        .map(|id| names[id].to_owned())
        .collect()
}

#[test]
fn the_domain_core_and_the_verifier_link_no_database_runtime_or_server() {
    let meta = metadata();
    let forbidden = |name: &str| {
        name.starts_with("sqlx")
            || name.starts_with("tokio")
            || name.starts_with("axum")
            || name.starts_with("hyper")
            || name.starts_with("tonic")
            || name.starts_with("tower")
            || name.starts_with("kube")
            || name.starts_with("postgres")
            || name.starts_with("opentelemetry")
            || matches!(
                name,
                "mio" | "redis" | "reqwest" | "object_store" | "rmcp" | "regorus"
            )
            || (name.starts_with("glassbox-") && name != "glassbox-verify")
    };
    for root in ["glassbox-domain", "glassbox-verify", "glassbox-images"] {
        let deps = closure(meta, root);
        assert!(!deps.is_empty(), "{root} has dependencies");
        let bad: Vec<&String> = deps.iter().filter(|d| forbidden(d)).collect();
        assert!(bad.is_empty(), "{root} links {bad:?}");
    }
    // The check can fail: the events store does link the database driver.
    assert!(closure(meta, "glassbox-events").contains("sqlx"));
}

/// The string literals of a Rust source file (comments skipped).
fn literals(src: &str) -> Vec<String> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'r' if (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#'))
                && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')) =>
            {
                let mut j = i + 1;
                let mut hashes = 0;
                while b.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                if b.get(j) != Some(&b'"') {
                    i += 1;
                    continue;
                }
                let close: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                let start = j + 1;
                let end = b[start..]
                    .windows(close.len())
                    .position(|w| w == close.as_slice())
                    .map_or(b.len(), |p| start + p);
                out.push(String::from_utf8_lossy(&b[start..end]).into_owned());
                i = end + close.len();
            }
            b'"' => {
                let start = i + 1;
                let mut j = start;
                while j < b.len() && b[j] != b'"' {
                    j += if b[j] == b'\\' { 2 } else { 1 };
                }
                out.push(String::from_utf8_lossy(&b[start..j.min(b.len())]).into_owned());
                i = j + 1;
            }
            b'\'' => {
                // A char literal ('x', '\n', '"'), or a lifetime ('a).
                if b.get(i + 1) == Some(&b'\\') {
                    let mut j = i + 2;
                    while j < b.len() && b[j] != b'\'' {
                        j += 1;
                    }
                    i = j + 1;
                } else if let Some(len) = std::str::from_utf8(&b[i + 1..(i + 5).min(b.len())])
                    .ok()
                    .or_else(|| std::str::from_utf8(&b[i + 1..(i + 2).min(b.len())]).ok())
                    .and_then(|s| s.chars().next())
                    .map(char::len_utf8)
                    && b.get(i + 1 + len) == Some(&b'\'')
                {
                    i += len + 2;
                } else {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    out
}

/// Every `.rs` file under each workspace member's `src/`, by package.
fn sources(meta: &Value) -> Vec<(String, PathBuf, String)> {
    let members: BTreeSet<&str> = meta["workspace_members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let mut files = Vec::new();
    for p in meta["packages"].as_array().expect("packages") {
        if !p["id"].as_str().is_some_and(|id| members.contains(id)) {
            continue;
        }
        let name = p["name"].as_str().expect("name").to_owned();
        let dir = Path::new(p["manifest_path"].as_str().expect("manifest"))
            .parent()
            .expect("package dir")
            .join("src");
        let mut todo = vec![dir];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let path = e.path();
                if path.is_dir() {
                    todo.push(path);
                } else if path.extension().is_some_and(|x| x == "rs") {
                    let text = std::fs::read_to_string(&path).expect("source");
                    files.push((name.clone(), path, text));
                }
            }
        }
    }
    assert!(files.len() > 50, "found the sources ({})", files.len());
    files
}

/// Table names of a schema, from the migrations.
fn tables(schema: &str) -> Vec<String> {
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir(workspace_root().join("migrations")).expect("migrations") {
        let text = std::fs::read_to_string(e.expect("entry").path()).expect("sql");
        for w in text.split_whitespace() {
            if let Some(t) = w.strip_prefix(&format!("{schema}.")) {
                let t: String = t
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !t.is_empty() {
                    out.insert(t);
                }
            }
        }
    }
    out.into_iter().collect()
}

fn mentions_table(literal: &str, schema: &str, tables: &[String]) -> bool {
    tables.iter().any(|t| {
        let needle = format!("{schema}.{t}");
        literal.match_indices(&needle).any(|(at, _)| {
            let after = literal[at + needle.len()..].chars().next();
            let before = literal[..at].chars().next_back();
            !after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                && !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        })
    })
}

#[test]
fn only_the_events_store_and_the_projector_write_their_sql() {
    let meta = metadata();
    let ledger = tables("ledger");
    let projections = tables("projections");
    assert!(ledger.contains(&"records".to_owned()) && projections.contains(&"jobs".to_owned()));
    let mut offences = Vec::new();
    let mut owned = (0, 0);
    for (package, path, text) in sources(meta) {
        for lit in literals(&text) {
            if mentions_table(&lit, "ledger", &ledger) {
                if package == "glassbox-events" {
                    owned.0 += 1;
                } else {
                    offences.push(format!("{}: ledger SQL {lit:?}", path.display()));
                }
            }
            if mentions_table(&lit, "projections", &projections) {
                if package == "glassbox-projector" {
                    owned.1 += 1;
                } else {
                    offences.push(format!("{}: projections SQL {lit:?}", path.display()));
                }
            }
        }
    }
    assert!(offences.is_empty(), "{offences:#?}");
    // The scan sees SQL where it is (so it could see it elsewhere).
    assert!(owned.0 > 10 && owned.1 > 10, "{owned:?}");
}

#[test]
fn names_that_cross_crates_are_spelled_once() {
    let meta = metadata();
    // (literal, the one file allowed to spell it)
    let once = [
        ("glassbox_ledger", "events/src/store.rs"),
        ("glassbox_projection", "projector/src/lib.rs"),
        ("job-", "domain/src/stream.rs"),
        ("session-", "domain/src/stream.rs"),
    ];
    let statuses = [
        "submitted",
        "accepted",
        "rejected",
        "claimed",
        "running",
        "completed",
        "cancel_requested",
        "opening",
        "expired",
    ];
    let root = workspace_root();
    let mut offences = Vec::new();
    let mut defined = BTreeSet::new();
    for (package, path, text) in sources(meta) {
        let rel = path
            .strip_prefix(&root)
            .unwrap_or(&path)
            .to_string_lossy()
            .into_owned();
        for lit in literals(&text) {
            for (name, home) in once {
                if lit == name {
                    if rel == home {
                        defined.insert(name);
                    } else {
                        offences.push(format!("{rel}: {name:?} (an item of {home})"));
                    }
                }
            }
            if statuses.contains(&lit.as_str()) && package != "glassbox-domain" {
                offences.push(format!(
                    "{rel}: status {lit:?} (use JobStatus / SessionStatus / CancelState)"
                ));
            }
        }
    }
    assert!(offences.is_empty(), "{offences:#?}");
    assert_eq!(
        defined.len(),
        once.len(),
        "each name is defined: {defined:?}"
    );
}

#[test]
fn the_literal_scanner_sees_strings_and_skips_comments() {
    let src = r##"
        // "in a comment"
        /* "in a block" /* nested "x" */ */
        let a = "plain \" quote";
        let b = r#"raw "with" quotes"#;
        let c = '"';
        fn f<'a>(x: &'a str) -> &'a str { "after lifetime" }
    "##;
    let l = literals(src);
    assert_eq!(
        l,
        vec![
            "plain \\\" quote".to_owned(),
            "raw \"with\" quotes".to_owned(),
            "after lifetime".to_owned()
        ]
    );
    assert!(mentions_table(
        "SELECT * FROM ledger.records",
        "ledger",
        &["records".into()]
    ));
    assert!(!mentions_table("ledger.key", "ledger", &["records".into()]));
    assert!(!mentions_table(
        "s.ledger.records_x",
        "ledger",
        &["records".into()]
    ));
}
