//! `glassbox images`: build, list, verify and export the runtime images (and the
//! plane images' bases), and `glassbox healthcheck` for container HEALTHCHECKs.

use anyhow::Context as _;
use clap::{Args, Subcommand};
use glassbox_images::build::{BuildEvent, Built};
use glassbox_images::{ImageStore, RecipeSet};
use glassbox_sandbox_runner::RuntimeRegistry;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// Build images from their recipes (the runtime registry's, or --recipes).
    /// An image is rebuilt only when its recipe changed, unless --force.
    Build(BuildArgs),
    /// The built images: name, digest, size, interpreter packages.
    List {
        #[command(flatten)]
        store: StoreArgs,
        /// Print the manifests as a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Hash images again and compare with their builds (exit 1 if one differs).
    Verify {
        #[command(flatten)]
        store: StoreArgs,
        /// Images to check (default: all).
        names: Vec<String>,
    },
    /// Write an image as a tar (--tar, for `podman import`) or an OCI image layout
    /// directory (--oci, for registries and Kubernetes).
    Export {
        #[command(flatten)]
        store: StoreArgs,
        name: String,
        #[arg(long, conflicts_with = "oci", required_unless_present = "oci")]
        tar: Option<PathBuf>,
        #[arg(long)]
        oci: Option<PathBuf>,
        /// The OCI reference name (default: the image's name).
        #[arg(long, requires = "oci")]
        tag: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct StoreArgs {
    /// The image store.
    #[arg(long = "store", env = "GLASSBOX_IMAGES_DIR", default_value = glassbox_images::DEFAULT_STORE)]
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Images to build (default: every recipe).
    pub names: Vec<String>,
    /// Runtime registry whose [images] to build (default: the built-in one).
    #[arg(long, env = "GLASSBOX_RUNTIMES_FILE")]
    pub runtimes: Option<PathBuf>,
    /// Recipe files (`[images.NAME]` tables) to build instead of the registry's.
    #[arg(long)]
    pub recipes: Vec<PathBuf>,
    /// Rebuild even when the recipe did not change.
    #[arg(long)]
    pub force: bool,
    /// Print every line debootstrap prints.
    #[arg(long)]
    pub verbose: bool,
}

pub async fn run(command: ImagesCommand) -> anyhow::Result<ExitCode> {
    tokio::task::spawn_blocking(move || run_blocking(command))
        .await
        .context("images task")?
}

fn run_blocking(command: ImagesCommand) -> anyhow::Result<ExitCode> {
    match command {
        ImagesCommand::Build(a) => {
            let recipes = if a.recipes.is_empty() {
                match &a.runtimes {
                    Some(p) => RuntimeRegistry::load(p)?.images().clone(),
                    None => RuntimeRegistry::builtin().images().clone(),
                }
            } else {
                let mut set = RecipeSet::default();
                for p in &a.recipes {
                    let text = std::fs::read_to_string(p)
                        .with_context(|| format!("reading {}", p.display()))?;
                    set.extend(RecipeSet::parse(&text, &p.display().to_string())?);
                }
                set
            };
            let names = if a.names.is_empty() {
                recipes.names()
            } else {
                for n in &a.names {
                    if recipes.get(n).is_none() {
                        anyhow::bail!(
                            "no recipe for image {n:?} (recipes: {})",
                            recipes.names().join(", ")
                        );
                    }
                }
                a.names.clone()
            };
            let store = ImageStore::open(&a.store.dir);
            build_all(&store, &recipes, &names, a.force, a.verbose)?;
            Ok(ExitCode::SUCCESS)
        }
        ImagesCommand::List { store, json } => {
            let list = ImageStore::open(&store.dir).list()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(ExitCode::SUCCESS);
            }
            if list.is_empty() {
                eprintln!(
                    "no images in {} (build them with `glassbox images build`)",
                    store.dir.display()
                );
            }
            println!(
                "{:<18} {:<71} {:>8} {:>5}  BUILT",
                "NAME", "DIGEST", "SIZE", "PKGS"
            );
            for m in list {
                println!(
                    "{:<18} {:<71} {:>6}MB {:>5}  {}",
                    m.name,
                    m.digest,
                    m.tar_bytes / (1 << 20),
                    m.packages.len(),
                    m.built_at.format("%Y-%m-%d %H:%M")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ImagesCommand::Verify { store, names } => {
            let store = ImageStore::open(&store.dir);
            let names = if names.is_empty() {
                store.list()?.into_iter().map(|m| m.name).collect()
            } else {
                names
            };
            let mut failed = false;
            for name in names {
                match store
                    .get(&name)
                    .and_then(|m| store.verify_manifest(&name, m))
                {
                    Ok(v) => println!("{name}: ok {}", v.digest),
                    Err(e) => {
                        failed = true;
                        println!("{name}: FAILED: {e}");
                    }
                }
            }
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        ImagesCommand::Export {
            store,
            name,
            tar,
            oci,
            tag,
        } => {
            let store = ImageStore::open(&store.dir);
            let manifest = store.get(&name)?;
            if let Some(file) = tar {
                glassbox_images::oci::export_tar(&store, &manifest, &file)?;
                eprintln!("{name}: {} written to {}", manifest.digest, file.display());
            } else if let Some(dir) = oci {
                let tag = tag.unwrap_or_else(|| name.clone());
                let d = glassbox_images::oci::export_oci(&store, &manifest, &dir, &tag)?;
                eprintln!(
                    "{name}: OCI image {d} (layer {}) written to {} as {tag}",
                    manifest.digest,
                    dir.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Builds (or finds cached) each of `names`, showing progress on stderr.
pub fn build_all(
    store: &ImageStore,
    recipes: &RecipeSet,
    names: &[String],
    force: bool,
    verbose: bool,
) -> anyhow::Result<Vec<Built>> {
    let tty = std::io::stderr().is_terminal();
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let Some(recipe) = recipes.get(name) else {
            anyhow::bail!("no recipe for image {name:?}");
        };
        let n = format!("[{}/{}] {name}", i + 1, names.len());
        let mut phases: Vec<String> = Vec::new();
        let mut count = 0usize;
        let mut progress = |e: BuildEvent<'_>| match e {
            BuildEvent::Building { recipe_digest, .. } => {
                eprintln!(
                    "{n}: building from recipe {recipe_digest} (debootstrap {} + {})",
                    recipe.suite,
                    recipe.packages.join(" ")
                );
            }
            BuildEvent::Line(line) => {
                if verbose {
                    eprintln!("{n}: {line}");
                    return;
                }
                let word = line
                    .strip_prefix("I: ")
                    .and_then(|l| l.split_whitespace().next())
                    .unwrap_or("")
                    .to_lowercase();
                count += 1;
                if tty {
                    let shown: String = line.chars().take(70).collect();
                    eprint!("\r\x1b[2K{n}: {shown}");
                } else if !word.is_empty() && !phases.contains(&word) {
                    eprintln!("{n}: {word}…");
                    phases.push(word);
                }
            }
            BuildEvent::Hashing => {
                if tty {
                    eprint!("\r\x1b[2K");
                }
                eprintln!("{n}: normalising and hashing the tree ({count} steps done)");
            }
        };
        let built = glassbox_images::build::ensure(store, name, recipe, force, &mut progress)?;
        let m = &built.manifest;
        if built.built {
            eprintln!(
                "{n}: built {} ({} MB, {} packages, {:.0} s)",
                m.digest,
                m.tar_bytes / (1 << 20),
                m.packages.len(),
                m.build_seconds
            );
        } else {
            eprintln!("{n}: up to date {}", m.digest);
        }
        out.push(built);
    }
    Ok(out)
}

/// Builds the images of `registry` that are missing from `store` (for `glassbox
/// dev`'s first start).
pub async fn ensure_runtime_images(
    store: ImageStore,
    registry: RuntimeRegistry,
) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || {
        let recipes = registry.images().clone();
        let mut missing = Vec::new();
        for (name, recipe) in recipes.iter() {
            if store.lookup(name, recipe)?.is_none() {
                missing.push(name.clone());
            }
        }
        if !missing.is_empty() {
            eprintln!(
                "glassbox dev: building runtime images {} into {} (first start only; a few minutes)",
                missing.join(", "),
                store.dir().display()
            );
            build_all(&store, &recipes, &missing, false, false)?;
        }
        anyhow::Ok(())
    })
    .await
    .context("image build task")?
}

/// `glassbox healthcheck URL`: exit 0 when URL answers 2xx within 3 s.
pub async fn healthcheck(url: &str) -> anyhow::Result<ExitCode> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(3))
        .build()?;
    match client.get(url).send().await {
        Ok(r) if r.status().is_success() => Ok(ExitCode::SUCCESS),
        Ok(r) => {
            eprintln!("healthcheck {url}: {}", r.status());
            Ok(ExitCode::FAILURE)
        }
        Err(e) => {
            eprintln!("healthcheck {url}: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}
