//! `glassbox audit export|verify-bundle`: evidence bundles (docs/evidence-bundle.md).

use anyhow::Context as _;
use clap::{Args, Subcommand};
use glassbox_audit_query::bundle::{self, Filters};
use glassbox_events::{ActorKind, AuthVia, EventStore, SigningKey};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Write an evidence bundle for the filters (records, inclusion proofs against
    /// the latest signed checkpoint, CSV and OCSF renderings, signed manifest), and
    /// record the export in the ledger.
    Export(ExportArgs),
    /// Verify a bundle offline (no database, no network). Exit 0 when it verifies,
    /// 1 when it does not (with the file and reason), 2 on errors.
    VerifyBundle {
        file: PathBuf,
        /// The verifier key (`name+id+key`, as `glassbox keys verifier` prints it).
        #[arg(long)]
        key: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub tenant: Option<String>,
    #[arg(long)]
    pub stream: Option<String>,
    #[arg(long)]
    pub event_type: Option<String>,
    /// Actor ID (a token's subject).
    #[arg(long)]
    pub actor: Option<String>,
    /// Correlation ID: every record of one request, job or workflow run (a
    /// request's `X-Request-Id`).
    #[arg(long = "correlation", value_name = "ID")]
    pub correlation: Option<String>,
    #[arg(long)]
    pub from_position: Option<u64>,
    #[arg(long)]
    pub to_position: Option<u64>,
    /// RFC 3339 time (inclusive).
    #[arg(long)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// RFC 3339 time (exclusive).
    #[arg(long)]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// Who exports (recorded in the manifest and the ledger).
    #[arg(long, env = "USER", default_value = "glassbox-cli")]
    pub exported_by: String,
    #[command(flatten)]
    pub key: crate::KeyFileArgs,
}

pub async fn run(db: &crate::DbArgs, command: AuditCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Export(a) => {
            let store = EventStore::connect(db.url()?).await?;
            let key = SigningKey::load_file(&a.key.key_file)
                .with_context(|| format!("checkpoint key {}", a.key.key_file.display()))?;
            let filters = Filters {
                tenant: a.tenant,
                stream: a.stream,
                event_type: a.event_type,
                actor: a.actor,
                correlation_id: a.correlation,
                from_position: a.from_position,
                to_position: a.to_position,
                since: a.since,
                until: a.until,
            };
            let mut actor = glassbox_events::Actor::system("glassbox-cli");
            actor.kind = ActorKind::User;
            actor.id = a.exported_by;
            actor.via = AuthVia::Internal;
            let (report, digest) =
                bundle::export_recorded(&store, &key, &filters, actor, &a.out).await?;
            let mut v = serde_json::to_value(&report)?;
            v["bundle"] = a.out.display().to_string().into();
            v["sha256"] = digest.to_hex().into();
            println!("{v}");
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::VerifyBundle { file, key, json } => {
            // The same code as the standalone `glassbox-verify bundle`.
            let out = glassbox_verify::cli::verify_bundle(&file, &key, json);
            if !out.stdout.is_empty() {
                println!("{}", out.stdout);
            }
            if out.code == 2 {
                anyhow::bail!("{}", out.stderr);
            }
            Ok(ExitCode::from(out.code))
        }
    }
}

/// `glassbox replay STREAM [--at N|TIME] [--reevaluate] [--json]`.
pub async fn replay(
    db: &crate::DbArgs,
    stream: &str,
    at: Option<String>,
    reevaluate: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use glassbox_audit_query::replay::{self, At};
    let at: Option<At> = match at {
        None => None,
        Some(a) => Some(
            a.parse()
                .map_err(|e: String| anyhow::anyhow!("--at: {e}"))?,
        ),
    };
    let store = EventStore::connect(db.url()?).await?;
    let r = replay::replay(&store, stream, at).await?;
    let mut reevaluated = None;
    if reevaluate {
        let config = glassbox_platform::Config::from_env().context("configuration")?;
        let kek_path = config.data_dir.join("kek");
        anyhow::ensure!(
            kek_path.exists(),
            "no key-encryption key at {} (set GLASSBOX_DATA_DIR to the service's data directory)",
            kek_path.display()
        );
        let kek = glassbox_platform::blob::Kek::load_or_generate(&kek_path)?;
        let blobs =
            glassbox_platform::blob::BlobStore::new(&config.blob, store.pool().clone(), kek)?;
        let records = replay::records_until(&store, stream, at).await?;
        reevaluated = Some(replay::reevaluate(&blobs, &records).await);
    }
    let all_reproduce = reevaluated
        .as_ref()
        .is_none_or(|v| v.iter().all(|x| x.reproduces));
    if json {
        let mut v = serde_json::to_value(&r)?;
        if let Some(re) = &reevaluated {
            v["reevaluated"] = serde_json::to_value(re)?;
            v["all_reproduce"] = all_reproduce.into();
        }
        println!("{v}");
    } else {
        println!(
            "stream {} (tenant {}) as of position {}",
            r.stream, r.tenant, r.at_position
        );
        for e in &r.timeline {
            println!(
                "{:>8}  {}  {:<28} {:<10} {}  {}",
                e["position"],
                e["occurred_at"].as_str().unwrap_or(""),
                e["type"].as_str().unwrap_or(""),
                e["actor"]["kind"].as_str().unwrap_or(""),
                e["actor"]["id"].as_str().unwrap_or(""),
                if e["summary"].is_null() {
                    String::new()
                } else {
                    e["summary"].to_string()
                },
            );
        }
        if !r.state.is_null() {
            println!("state: {}", r.state);
        }
        if let Some(re) = &reevaluated {
            for x in re {
                println!(
                    "decision at {} ({}): {}",
                    x.position,
                    x.policy,
                    if x.reproduces {
                        "reproduces".to_owned()
                    } else {
                        format!("DOES NOT reproduce: recorded {} now {}", x.recorded, x.now)
                    }
                );
            }
        }
    }
    Ok(if all_reproduce {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
