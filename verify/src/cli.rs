//! The verification commands as plain functions, shared by the standalone
//! `glassbox-verify` binary and `glassbox audit verify-bundle`: one
//! implementation, one output. Exit codes: 0 verifies, 1 does not, 2 bad input.

use crate::bundle;
use crate::checkpoint::VerifierKey;
use std::path::Path;

/// What a command prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub code: u8,
    pub stdout: String,
    pub stderr: String,
}

fn usage(message: String) -> Outcome {
    Outcome {
        code: 2,
        stdout: String::new(),
        stderr: message,
    }
}

/// Verifies an evidence bundle against a verifier key (`name+id+key`).
pub fn verify_bundle(file: &Path, key: &str, json: bool) -> Outcome {
    let key = match VerifierKey::parse(key) {
        Ok(k) => k,
        Err(e) => return usage(format!("--key is not a verifier key: {e}")),
    };
    let started = std::time::Instant::now();
    match bundle::verify_bundle(file, &key) {
        Ok(r) => Outcome {
            code: 0,
            stdout: if json {
                serde_json::json!({"verifies": true, "report": r}).to_string()
            } else {
                format!(
                    "bundle verifies: {} records, each included in the tree of size {} (root {}), signed by {}; exported by {}; bundle sha256 {} ({:.2}s)",
                    r.records,
                    r.tree_size,
                    r.root,
                    key.name,
                    r.exported_by,
                    r.bundle_sha256,
                    started.elapsed().as_secs_f64()
                )
            },
            stderr: String::new(),
        },
        Err(f) => Outcome {
            code: 1,
            stdout: if json {
                serde_json::json!({"verifies": false, "file": f.file, "reason": f.reason})
                    .to_string()
            } else {
                format!("bundle does NOT verify: {f}")
            },
            stderr: String::new(),
        },
    }
}

/// Verifies a signed checkpoint note (C2SP) against a verifier key and prints
/// what it commits to.
pub fn verify_checkpoint(note: &Path, key: &str, json: bool) -> Outcome {
    let key = match VerifierKey::parse(key) {
        Ok(k) => k,
        Err(e) => return usage(format!("--key is not a verifier key: {e}")),
    };
    let text = match std::fs::read_to_string(note) {
        Ok(t) => t,
        Err(e) => return usage(format!("{}: {e}", note.display())),
    };
    match key.open(&text) {
        Ok(cp) => Outcome {
            code: 0,
            stdout: if json {
                serde_json::json!({"verifies": true, "origin": cp.origin, "tree_size": cp.size, "root": cp.root.to_hex()})
                    .to_string()
            } else {
                format!(
                    "checkpoint verifies: {} records of {}, root {}, signed by {}",
                    cp.size,
                    cp.origin,
                    cp.root.to_hex(),
                    key.name
                )
            },
            stderr: String::new(),
        },
        Err(e) => Outcome {
            code: 1,
            stdout: if json {
                serde_json::json!({"verifies": false, "reason": e.to_string()}).to_string()
            } else {
                format!("checkpoint does NOT verify: {e}")
            },
            stderr: String::new(),
        },
    }
}

pub const USAGE: &str = "\
glassbox-verify — offline verification of Glassbox evidence (no database, no network)

usage:
  glassbox-verify bundle FILE --key NAME+ID+KEY [--json]
  glassbox-verify checkpoint NOTE --key NAME+ID+KEY [--json]

exit codes: 0 verifies, 1 does not verify (the file and reason are printed), 2 bad input";

/// Parses `args` (without the program name) and runs the command.
pub fn run(args: &[String]) -> Outcome {
    let mut positional = Vec::new();
    let (mut key, mut json) = (None, false);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--key" => key = it.next().cloned(),
            "--json" => json = true,
            "-h" | "--help" => {
                return Outcome {
                    code: 0,
                    stdout: USAGE.into(),
                    stderr: String::new(),
                };
            }
            other if other.starts_with("--") => {
                return usage(format!("unknown option {other}\n\n{USAGE}"));
            }
            other => positional.push(other.to_owned()),
        }
    }
    let Some(key) = key else {
        return usage(format!("--key is required\n\n{USAGE}"));
    };
    match positional.as_slice() {
        [cmd, file] if cmd == "bundle" => verify_bundle(Path::new(file), &key, json),
        [cmd, file] if cmd == "checkpoint" => verify_checkpoint(Path::new(file), &key, json),
        _ => usage(USAGE.into()),
    }
}
