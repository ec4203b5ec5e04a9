//! deploy/monitoring is checked, not just shipped: the alert rules load and
//! pass their unit tests in promtool (Debian's `prometheus` package), the
//! dashboard is well-formed, and every series either of them uses is
//! documented in docs/operations.md (the end-to-end Prometheus test checks
//! that a running Glassbox exports each of them).

#[path = "metric_names.rs"]
mod metric_names;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/monitoring")
}

fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir())
        .output()
        .expect("promtool (Debian package prometheus; scripts/test.sh installs it)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_alert_rules_load_in_promtool() {
    let (ok, out) = promtool(&["check", "rules", "alerts.yml"]);
    assert!(ok, "{out}");
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn the_alert_rules_pass_their_unit_tests() {
    let (ok, out) = promtool(&["test", "rules", "alerts.test.yml"]);
    assert!(ok, "{out}");
}

#[test]
fn every_alert_has_a_unit_test_and_a_runbook_entry() {
    let rules = std::fs::read_to_string(dir().join("alerts.yml")).expect("rules");
    let tests = std::fs::read_to_string(dir().join("alerts.test.yml")).expect("tests");
    let ops = std::fs::read_to_string(dir().join("../../docs/operations.md")).expect("docs");
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 6, "{alerts:?}");
    for a in alerts {
        assert!(
            tests.contains(&format!("alertname: {a}")),
            "{a} has no promtool test"
        );
        assert!(
            ops.contains(a),
            "{a} is not explained in docs/operations.md"
        );
    }
}

#[test]
fn the_dashboard_is_well_formed() {
    let d: Value = serde_json::from_str(
        &std::fs::read_to_string(dir().join("grafana-dashboard.json")).expect("dashboard"),
    )
    .expect("JSON");
    let panels = d["panels"].as_array().expect("panels");
    assert!(panels.len() >= 12);
    let mut ids = std::collections::BTreeSet::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("id")),
            "duplicate panel id"
        );
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{p}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{p}");
        for t in targets {
            let e = t["expr"].as_str().expect("expr");
            assert!(!metric_names::referenced(e).is_empty(), "{e}");
            assert_eq!(
                e.matches('(').count(),
                e.matches(')').count(),
                "unbalanced: {e}"
            );
        }
    }
}

#[test]
fn every_series_used_is_documented() {
    let ops = std::fs::read_to_string(dir().join("../../docs/operations.md")).expect("docs");
    for name in metric_names::monitoring() {
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name);
        assert!(
            ops.contains(base),
            "{name} is used by deploy/monitoring but not documented in docs/operations.md"
        );
    }
}
