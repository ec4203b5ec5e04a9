//! The builder: `debootstrap --variant=minbase` with the recipe's packages, then a
//! normalisation that makes the tree depend only on the package versions (no logs,
//! caches, package lists, host files such as `resolv.conf`, or dates such as the
//! ones in `/etc/shadow`), then the digest, then an atomic move into the store.
//!
//! Documentation is dropped except each package's copyright file. Runtime images
//! get the sandbox's mount points (`/workspace`, `/mnt/wheels`, `/run/egress`, `/glassbox-agent`),
//! because the sandbox root is mounted read-only.

use crate::ImageError;
use crate::recipe::{BUILDER_VERSION, ImageKind, Recipe};
use crate::store::{ImageStore, Manifest, write_atomic};
use crate::tree::digest_tree;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Names a directory of downloaded `.deb` files shared by builds (default: the
/// store's `cache/debs`).
pub const DEB_CACHE_ENV: &str = "GLASSBOX_DEB_CACHE";

/// What the builder is doing, for progress displays.
#[derive(Debug)]
pub enum BuildEvent<'a> {
    /// Starting to build `name` (not cached).
    Building {
        name: &'a str,
        recipe_digest: &'a str,
    },
    /// A line `debootstrap` printed (`I: Retrieving …`).
    Line(&'a str),
    /// Normalising and hashing the tree.
    Hashing,
}

/// The outcome of [`ensure`].
#[derive(Debug, Clone)]
pub struct Built {
    pub manifest: Manifest,
    /// False when the store already held a build of the recipe.
    pub built: bool,
}

/// The image of `recipe` in `store`: the cached build, or a new one (always a new
/// one with `force`). Builds are serialised by the store's lock.
pub fn ensure(
    store: &ImageStore,
    name: &str,
    recipe: &Recipe,
    force: bool,
    progress: &mut dyn FnMut(BuildEvent<'_>),
) -> Result<Built, ImageError> {
    recipe.check(name).map_err(|reason| ImageError::Recipe {
        source_name: name.to_owned(),
        reason,
    })?;
    let _lock = store.lock(name)?;
    if !force
        && let Some(manifest) = store.lookup(name, recipe)?
        && store.rootfs(&manifest.digest).is_dir()
    {
        store.record(&Manifest {
            name: name.to_owned(),
            ..manifest.clone()
        })?;
        return Ok(Built {
            manifest,
            built: false,
        });
    }
    let recipe_digest = recipe.digest();
    progress(BuildEvent::Building {
        name,
        recipe_digest: &recipe_digest,
    });
    let started = Instant::now();
    if !rustix::process::geteuid().is_root() {
        return Err(ImageError::Tool {
            image: name.to_owned(),
            step: "build",
            detail: "building images runs debootstrap, which needs root".into(),
        });
    }
    let tmp_dir = store.dir().join("tmp");
    // Downloaded packages: shared between stores with GLASSBOX_DEB_CACHE.
    let debs = std::env::var_os(DEB_CACHE_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| store.dir().join("cache").join("debs"));
    for d in [&tmp_dir, &debs] {
        std::fs::create_dir_all(d).map_err(ImageError::io(name, "create store directories", d))?;
    }
    // Leftovers of interrupted builds (we hold the lock, so none is running).
    if let Ok(entries) = std::fs::read_dir(&tmp_dir) {
        for e in entries.flatten() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    let work = tmp_dir.join(format!("{name}-{}", std::process::id()));
    let root = work.join("rootfs");
    std::fs::create_dir_all(&work).map_err(ImageError::io(
        name,
        "create build directory",
        &work,
    ))?;
    let result = build_into(name, recipe, &root, &debs, progress).and_then(|packages| {
        progress(BuildEvent::Hashing);
        normalise(name, recipe.kind, &root)?;
        let summary = digest_tree(&root, name)?;
        let manifest = Manifest {
            name: name.to_owned(),
            digest: summary.digest.clone(),
            recipe_digest: recipe_digest.clone(),
            kind: recipe.kind,
            suite: recipe.suite.clone(),
            requested: recipe.packages.clone(),
            packages,
            tar_bytes: summary.tar_bytes,
            content_bytes: summary.content_bytes,
            entries: summary.entries,
            builder: BUILDER_VERSION.to_owned(),
            built_at: chrono::Utc::now(),
            build_seconds: started.elapsed().as_secs_f64(),
        };
        install(store, &root, &manifest)?;
        Ok(manifest)
    });
    let _ = std::fs::remove_dir_all(&work);
    let manifest = result?;
    store.record(&manifest)?;
    Ok(Built {
        manifest,
        built: true,
    })
}

/// Runs debootstrap into `root`; returns the installed packages (`name=version`).
fn build_into(
    name: &str,
    recipe: &Recipe,
    root: &Path,
    debs: &Path,
    progress: &mut dyn FnMut(BuildEvent<'_>),
) -> Result<Vec<String>, ImageError> {
    let tool = |step: &'static str, detail: String| ImageError::Tool {
        image: name.to_owned(),
        step,
        detail,
    };
    let (reader, writer) = std::io::pipe().map_err(|e| tool("run debootstrap", e.to_string()))?;
    let writer2 = writer
        .try_clone()
        .map_err(|e| tool("run debootstrap", e.to_string()))?;
    let mut cmd = std::process::Command::new("debootstrap");
    cmd.arg("--variant=minbase")
        .arg(format!("--include={}", recipe.packages.join(",")))
        .arg(format!("--cache-dir={}", debs.display()))
        .arg(&recipe.suite)
        .arg(root)
        .arg(recipe.effective_mirror())
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("LC_ALL", "C")
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .stdin(std::process::Stdio::null())
        .stdout(writer)
        .stderr(writer2);
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            tool(
                "run debootstrap",
                "debootstrap is not installed (apt-get install -y debootstrap)".into(),
            )
        } else {
            tool("run debootstrap", e.to_string())
        }
    })?;
    drop(cmd);
    let mut tail: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    for line in std::io::BufReader::new(reader).lines() {
        let Ok(line) = line else { break };
        progress(BuildEvent::Line(&line));
        if tail.len() == 20 {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    let status = child
        .wait()
        .map_err(|e| tool("run debootstrap", e.to_string()))?;
    if !status.success() {
        return Err(tool(
            "run debootstrap",
            format!("{status}; last lines:\n{}", Vec::from(tail).join("\n")),
        ));
    }
    let out = std::process::Command::new("dpkg-query")
        .arg(format!(
            "--admindir={}",
            root.join("var/lib/dpkg").display()
        ))
        .args(["-W", "-f", "${Package}=${Version}\n"])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| tool("list packages", e.to_string()))?;
    if !out.status.success() {
        return Err(tool(
            "list packages",
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    let mut packages: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    packages.sort();
    for wanted in &recipe.packages {
        if !packages
            .iter()
            .any(|p| p.split('=').next() == Some(wanted.as_str()))
        {
            return Err(tool("list packages", format!("{wanted} is not installed")));
        }
    }
    Ok(packages)
}

/// Directories emptied (kept, contents removed).
const EMPTIED: &[&str] = &[
    "dev",
    "run",
    "tmp",
    "var/tmp",
    "var/log",
    "var/cache/apt",
    "var/lib/apt/lists",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
];

/// Files removed: host copies, dates, backups, caches.
const REMOVED: &[&str] = &[
    "etc/resolv.conf",
    "etc/hostname",
    "etc/machine-id",
    "etc/shadow",
    "etc/shadow-",
    "etc/gshadow",
    "etc/gshadow-",
    "etc/passwd-",
    "etc/group-",
    "etc/subuid",
    "etc/subgid",
    "etc/.pwd.lock",
    "var/cache/ldconfig/aux-cache",
    "var/cache/debconf/config.dat-old",
    "var/cache/debconf/templates.dat-old",
    "var/lib/dpkg/status-old",
    "var/lib/dpkg/diversions-old",
    "var/lib/dpkg/statoverride-old",
];

fn normalise(name: &str, kind: ImageKind, root: &Path) -> Result<(), ImageError> {
    let io = |step: &'static str, p: &Path| ImageError::io(name, step, p.to_owned());
    for d in EMPTIED {
        let dir = root.join(d);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let e = e.map_err(io("normalise", &dir))?;
            remove_any(&e.path()).map_err(io("normalise", &e.path()))?;
        }
    }
    for f in REMOVED {
        let p = root.join(f);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("normalise", &p)(e)),
        }
    }
    // Documentation, except each package's copyright notice.
    let doc = root.join("usr/share/doc");
    if let Ok(entries) = std::fs::read_dir(&doc) {
        for pkg in entries.flatten() {
            let p = pkg.path();
            if !pkg.file_type().is_ok_and(|t| t.is_dir()) {
                remove_any(&p).map_err(io("normalise", &p))?;
                continue;
            }
            for e in std::fs::read_dir(&p)
                .map_err(io("normalise", &p))?
                .flatten()
            {
                if e.file_name() != "copyright" {
                    remove_any(&e.path()).map_err(io("normalise", &e.path()))?;
                }
            }
        }
    }
    let hosts = root.join("etc/hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n::1 localhost\n")
        .map_err(io("normalise", &hosts))?;
    if kind == ImageKind::Runtime {
        for d in [
            "workspace",
            "mnt/wheels",
            "run/egress",
            "proc",
            "sys",
            "dev",
        ] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(io("add mount points", &p))?;
        }
        let agent = root.join("glassbox-agent");
        std::fs::write(&agent, "").map_err(io("add mount points", &agent))?;
    }
    Ok(())
}

fn remove_any(p: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Moves the tree into `sha256/<hex>/rootfs` and writes its manifest. A tree of
/// the same digest that is already there is kept (it is the same content).
fn install(store: &ImageStore, root: &Path, manifest: &Manifest) -> Result<(), ImageError> {
    use std::os::unix::fs::PermissionsExt as _;
    let name = &manifest.name;
    let dir = store.image_dir(&manifest.digest);
    let target = dir.join("rootfs");
    if target.is_dir() && dir.join("manifest.json").is_file() {
        return Ok(());
    }
    if dir.exists() {
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755));
        std::fs::remove_dir_all(&dir).map_err(ImageError::io(name, "install", &dir))?;
    }
    std::fs::create_dir_all(&dir).map_err(ImageError::io(name, "install", &dir))?;
    std::fs::rename(root, &target).map_err(ImageError::io(name, "install", &target))?;
    let text = serde_json::to_vec_pretty(manifest).map_err(|e| ImageError::Invalid {
        image: name.clone(),
        step: "install",
        path: dir.clone(),
        detail: e.to_string(),
    })?;
    write_atomic(&dir.join("manifest.json"), &text, name)?;
    // Read-only from here on: only a rebuild (a new digest) changes an image.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555))
        .map_err(ImageError::io(name, "install", &dir))
}
