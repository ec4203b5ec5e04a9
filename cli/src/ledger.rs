//! `glassbox ledger …`: verify, checkpoint, proofs, show.

use crate::{DbArgs, KeyFileArgs};
use anyhow::Context as _;
use clap::Subcommand;
use glassbox_events::merkle;
use glassbox_events::{EventStore, SigningKey, VerifierKey};
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Verify entry hashes, the chain, dense positions and stream versions, and the
    /// Merkle root against every signed checkpoint. Exit 0 only if all holds.
    Verify {
        /// Start here (incremental: from the last signed checkpoint before it).
        #[arg(long)]
        from: Option<u64>,
        /// Stop after this position (default: the head).
        #[arg(long)]
        to: Option<u64>,
        /// Verifier key `<name>+<id>+<key>` (default: derived from --key-file).
        #[arg(long, env = "GLASSBOX_LEDGER_VERIFIER_KEY")]
        verifier_key: Option<String>,
        #[command(flatten)]
        key: KeyFileArgs,
        /// Extra signed checkpoint notes kept outside the database (repeatable).
        #[arg(long = "checkpoint")]
        checkpoints: Vec<PathBuf>,
        /// Check the chain only, ignoring checkpoints (cannot detect a cut or rewritten tail).
        #[arg(long, conflicts_with = "verifier_key")]
        chain_only: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Sign and store a checkpoint for the current ledger size.
    Checkpoint {
        #[command(flatten)]
        key: KeyFileArgs,
        /// Checkpoint origin line (default: the key name).
        #[arg(long, env = "GLASSBOX_LEDGER_ORIGIN")]
        origin: Option<String>,
    },
    /// Merkle proofs (RFC 9162), checked before they are printed.
    Proof {
        #[command(subcommand)]
        command: ProofCommand,
    },
    /// Print one record: its canonical bytes as JSON, entry hash and leaf hash.
    Show { position: u64 },
}

#[derive(Debug, Subcommand)]
pub enum ProofCommand {
    /// Inclusion proof of the record at POSITION in the tree of SIZE records.
    Inclusion {
        position: u64,
        /// Tree size (default: the current head).
        #[arg(long)]
        size: Option<u64>,
    },
    /// Consistency proof between the trees of FIRST and SECOND records.
    Consistency { first: u64, second: u64 },
}

async fn open(db: &DbArgs) -> anyhow::Result<EventStore> {
    EventStore::connect(db.url()?)
        .await
        .context("connecting to the ledger database")
}

fn hexes(v: &[glassbox_events::Digest]) -> Vec<String> {
    v.iter().map(|d| d.to_hex()).collect()
}

pub async fn run(db: &DbArgs, command: LedgerCommand) -> anyhow::Result<ExitCode> {
    match command {
        LedgerCommand::Verify {
            from,
            to,
            verifier_key,
            key,
            checkpoints,
            chain_only,
            json,
        } => {
            let verifier = if chain_only {
                None
            } else if let Some(text) = verifier_key {
                Some(VerifierKey::parse(&text).context("parsing --verifier-key")?)
            } else {
                Some(
                    SigningKey::load_file(&key.key_file)
                        .with_context(|| {
                            format!(
                                "no verifier key: pass --verifier-key, a --key-file (tried {}), or --chain-only",
                                key.key_file.display()
                            )
                        })?
                        .verifier(),
                )
            };
            let mut notes = Vec::new();
            for path in &checkpoints {
                notes.push(
                    std::fs::read_to_string(path)
                        .with_context(|| format!("reading checkpoint note {}", path.display()))?,
                );
            }
            let store = open(db).await?;
            let started = std::time::Instant::now();
            let result = store.verify(verifier.as_ref(), &notes, from, to).await?;
            let secs = started.elapsed().as_secs_f64();
            match result {
                Ok(report) => {
                    if json {
                        println!(
                            "{}",
                            json!({"ok": true, "from": report.from, "to": report.to, "records": report.records,
                                "root": report.root, "last_entry_hash": report.last_entry_hash,
                                "checkpoints_checked": report.checkpoints_checked,
                                "checkpoints_used": verifier.is_some()})
                        );
                    } else {
                        println!(
                            "ledger verifies: positions {}..={} ({} records) in {:.2}s; root {}; {} signed checkpoints matched{}",
                            report.from,
                            report.to,
                            report.records,
                            secs,
                            report.root,
                            report.checkpoints_checked.len(),
                            if verifier.is_none() {
                                " (chain only: checkpoints not checked)"
                            } else {
                                ""
                            }
                        );
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(failure) => {
                    if json {
                        println!(
                            "{}",
                            json!({"ok": false, "position": failure.position, "problem": failure.problem.to_string()})
                        );
                    } else {
                        println!("LEDGER DOES NOT VERIFY: {failure}");
                    }
                    Ok(ExitCode::from(1))
                }
            }
        }
        LedgerCommand::Checkpoint { key, origin } => {
            let k = SigningKey::load_file(&key.key_file)
                .with_context(|| format!("loading key file {}", key.key_file.display()))?;
            let origin = origin.unwrap_or_else(|| k.name().to_owned());
            let store = open(db).await?;
            match store.publish_checkpoint(&k, &origin).await? {
                Some(cp) => {
                    print!("{}", cp.note);
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    eprintln!(
                        "no new checkpoint: nothing appended since the last one, or another publisher is running"
                    );
                    if let Some(last) = store.checkpoints().await?.pop() {
                        print!("{}", last.note);
                    }
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
        LedgerCommand::Proof { command } => {
            let store = open(db).await?;
            match command {
                ProofCommand::Inclusion { position, size } => {
                    let size = match size {
                        Some(s) => s,
                        None => store.head().await?.0,
                    };
                    let rec = store
                        .record(position)
                        .await?
                        .with_context(|| format!("no record at position {position}"))?;
                    let leaf = merkle::leaf_hash(&rec.canonical);
                    let root = store.root_at(size).await?;
                    let proof = store.inclusion_proof(position, size).await?;
                    let ok =
                        merkle::verify_inclusion(position - 1, size, &leaf, &proof, &root).is_ok();
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&json!({
                            "position": position, "leaf_index": position - 1, "tree_size": size,
                            "leaf_hash": leaf, "root": root, "proof": hexes(&proof), "verified": ok
                        }))?
                    );
                    Ok(if ok {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    })
                }
                ProofCommand::Consistency { first, second } => {
                    let proof = store.consistency_proof(first, second).await?;
                    let (r1, r2) = (store.root_at(first).await?, store.root_at(second).await?);
                    let ok = merkle::verify_consistency(first, second, &proof, &r1, &r2).is_ok();
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&json!({
                            "first": first, "second": second, "first_root": r1, "second_root": r2,
                            "proof": hexes(&proof), "verified": ok
                        }))?
                    );
                    Ok(if ok {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    })
                }
            }
        }
        LedgerCommand::Show { position } => {
            let store = open(db).await?;
            let rec = store
                .record(position)
                .await?
                .with_context(|| format!("no record at position {position}"))?;
            let value: serde_json::Value = serde_json::from_slice(&rec.canonical)?;
            let known =
                glassbox_events::KnownEvent::decode(&rec.record.event_type, &rec.record.data);
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({
                    "record": value,
                    "entry_hash": rec.entry_hash,
                    "leaf_hash": merkle::leaf_hash(&rec.canonical),
                    "known_type": matches!(known, Ok(Some(_))),
                }))?
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
