//! The image store: built trees kept unpacked and read-only, named by digest.
//!
//! Layout under the store directory (default `/var/lib/glassbox/images`):
//! `sha256/<hex>/rootfs/` (the tree) and `sha256/<hex>/manifest.json`;
//! `recipes/<recipe hex>` holds the digest built from that recipe (the build cache);
//! `names/<name>.json` the latest build of each name (what `glassbox images list`
//! shows); `cache/debs/` keeps downloaded packages; `tmp/` holds builds in
//! progress; `.lock` serialises builds across processes.

use crate::ImageError;
use crate::recipe::{ImageKind, Recipe};
use crate::tree::{ImageDigest, digest_tree};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What a build recorded about an image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub digest: ImageDigest,
    pub recipe_digest: String,
    pub kind: ImageKind,
    pub suite: String,
    /// Requested packages.
    pub requested: Vec<String>,
    /// Every installed package as `name=version`.
    pub packages: Vec<String>,
    /// Size of the canonical tar (= the OCI layer).
    pub tar_bytes: u64,
    pub content_bytes: u64,
    pub entries: u64,
    pub builder: String,
    pub built_at: chrono::DateTime<chrono::Utc>,
    pub build_seconds: f64,
}

impl Manifest {
    /// The installed version of `package`, if it is in the image.
    pub fn package_version(&self, package: &str) -> Option<&str> {
        self.packages
            .iter()
            .find_map(|p| p.strip_prefix(package)?.strip_prefix('='))
    }
}

/// An image whose tree was just hashed and matched its manifest.
#[derive(Debug, Clone)]
pub struct VerifiedImage {
    pub name: String,
    pub digest: ImageDigest,
    pub rootfs: PathBuf,
    pub manifest: Manifest,
}

#[derive(Debug, Clone)]
pub struct ImageStore {
    dir: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct NameRef {
    digest: ImageDigest,
    recipe_digest: String,
}

impl ImageStore {
    /// A store at `dir` (nothing is touched until it is used).
    pub fn open(dir: impl Into<PathBuf>) -> ImageStore {
        ImageStore { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn image_dir(&self, digest: &ImageDigest) -> PathBuf {
        self.dir.join("sha256").join(digest.hex())
    }

    pub fn rootfs(&self, digest: &ImageDigest) -> PathBuf {
        self.image_dir(digest).join("rootfs")
    }

    pub(crate) fn recipe_ref(&self, recipe_digest: &str) -> PathBuf {
        self.dir
            .join("recipes")
            .join(recipe_digest.trim_start_matches("sha256:"))
    }

    pub(crate) fn name_ref(&self, name: &str) -> PathBuf {
        self.dir.join("names").join(format!("{name}.json"))
    }

    /// The manifest of the image built from `recipe`, if there is one.
    pub fn lookup(&self, name: &str, recipe: &Recipe) -> Result<Option<Manifest>, ImageError> {
        let path = self.recipe_ref(&recipe.digest());
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ImageError::io(name, "read build cache", path)(e)),
        };
        let digest = ImageDigest::parse(text.trim()).map_err(|detail| ImageError::Invalid {
            image: name.to_owned(),
            step: "read build cache",
            path: path.clone(),
            detail,
        })?;
        match self.manifest(name, &digest) {
            Ok(m) => Ok(Some(m)),
            Err(ImageError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The manifest of the image `digest`.
    pub fn manifest(&self, name: &str, digest: &ImageDigest) -> Result<Manifest, ImageError> {
        let path = self.image_dir(digest).join("manifest.json");
        let text =
            std::fs::read_to_string(&path).map_err(ImageError::io(name, "read manifest", &path))?;
        let m: Manifest = serde_json::from_str(&text).map_err(|e| ImageError::Invalid {
            image: name.to_owned(),
            step: "read manifest",
            path: path.clone(),
            detail: e.to_string(),
        })?;
        if &m.digest != digest {
            return Err(ImageError::Invalid {
                image: name.to_owned(),
                step: "read manifest",
                path,
                detail: format!("names {} but is stored as {digest}", m.digest),
            });
        }
        Ok(m)
    }

    /// The image built from `recipe`, hashed now and compared with its build:
    /// missing → [`ImageError::NotBuilt`], changed → [`ImageError::Altered`].
    pub fn verify(&self, name: &str, recipe: &Recipe) -> Result<VerifiedImage, ImageError> {
        let manifest = self
            .lookup(name, recipe)?
            .ok_or_else(|| ImageError::NotBuilt {
                image: name.to_owned(),
                recipe_digest: recipe.digest(),
            })?;
        self.verify_manifest(name, manifest)
    }

    /// Hashes the tree of `manifest` and compares.
    pub fn verify_manifest(
        &self,
        name: &str,
        manifest: Manifest,
    ) -> Result<VerifiedImage, ImageError> {
        let rootfs = self.rootfs(&manifest.digest);
        if !rootfs.is_dir() {
            return Err(ImageError::Invalid {
                image: name.to_owned(),
                step: "verify",
                path: rootfs,
                detail: "the image's tree is missing".into(),
            });
        }
        let summary = digest_tree(&rootfs, name)?;
        if summary.digest != manifest.digest {
            return Err(ImageError::Altered {
                image: name.to_owned(),
                expected: manifest.digest.to_string(),
                actual: summary.digest.to_string(),
            });
        }
        Ok(VerifiedImage {
            name: name.to_owned(),
            digest: manifest.digest.clone(),
            rootfs,
            manifest,
        })
    }

    /// The latest build of each name, by name.
    pub fn list(&self) -> Result<Vec<Manifest>, ImageError> {
        let names = self.dir.join("names");
        let entries = match std::fs::read_dir(&names) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(ImageError::io("-", "list images", names)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(ImageError::io("-", "list images", &names))?;
            let file = entry.file_name();
            let Some(name) = file.to_str().and_then(|f| f.strip_suffix(".json")) else {
                continue;
            };
            if crate::recipe::check_name(name).is_err() {
                continue;
            }
            let mut m = self.get(name)?;
            m.name = name.to_owned();
            out.push(m);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The latest build of `name`.
    pub fn get(&self, name: &str) -> Result<Manifest, ImageError> {
        crate::recipe::check_name(name).map_err(|detail| ImageError::Invalid {
            image: name.to_owned(),
            step: "find image",
            path: self.dir.clone(),
            detail,
        })?;
        let path = self.name_ref(name);
        let text =
            std::fs::read_to_string(&path).map_err(ImageError::io(name, "find image", &path))?;
        let r: NameRef = serde_json::from_str(&text).map_err(|e| ImageError::Invalid {
            image: name.to_owned(),
            step: "find image",
            path,
            detail: e.to_string(),
        })?;
        self.manifest(name, &r.digest)
    }

    /// Records `manifest` as the build of its recipe and the latest of its name.
    pub(crate) fn record(&self, manifest: &Manifest) -> Result<(), ImageError> {
        let name = &manifest.name;
        write_atomic(
            &self.recipe_ref(&manifest.recipe_digest),
            manifest.digest.as_str().as_bytes(),
            name,
        )?;
        let r = NameRef {
            digest: manifest.digest.clone(),
            recipe_digest: manifest.recipe_digest.clone(),
        };
        let text = serde_json::to_vec_pretty(&r).map_err(|e| ImageError::Invalid {
            image: name.clone(),
            step: "record image",
            path: self.name_ref(name),
            detail: e.to_string(),
        })?;
        write_atomic(&self.name_ref(name), &text, name)
    }

    /// An exclusive lock on the store for the life of the guard (builds).
    pub fn lock(&self, image: &str) -> Result<StoreLock, ImageError> {
        std::fs::create_dir_all(&self.dir).map_err(ImageError::io(
            image,
            "create store",
            &self.dir,
        ))?;
        let path = self.dir.join(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(ImageError::io(image, "lock store", &path))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| ImageError::io(image, "lock store", &path)(e.into()))?;
        Ok(StoreLock { _file: file })
    }
}

/// Held while building; dropping it unlocks.
#[derive(Debug)]
pub struct StoreLock {
    _file: std::fs::File,
}

/// Writes `bytes` to `path` by a rename, so readers see the old or the new file.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], image: &str) -> Result<(), ImageError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(ImageError::io(
            image,
            "create directory",
            parent,
        ))?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(ImageError::io(image, "write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(ImageError::io(image, "write", path))
}
