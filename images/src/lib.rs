//! Images: the root filesystems sandboxes run on, and the bases of the plane images.
//!
//! Why a crate of its own: a sandbox must never see the host's `/usr` (a job could
//! list the host's tools and its interpreter was whatever the host had). Each runtime
//! therefore runs on a tree built from Debian packages by a [`Recipe`], and the tree
//! is named by its content — the SHA-256 of a canonical tar of it ([`tree`]) — so a
//! ledger record (`sandbox.provisioned.image_digest`) names exactly what code ran
//! on. The same canonical tar is the single layer of the exported OCI image
//! ([`oci`]), so the digest is also that layer's `diff_id`.
//!
//! The crate does blocking file and process I/O only (no async, no database): the
//! builder runs `debootstrap`, the [`store`] keeps built trees unpacked and
//! read-only, and verification re-hashes a tree before a runner uses it.

pub mod build;
pub mod oci;
pub mod recipe;
pub mod store;
pub mod tree;

pub use recipe::{ImageKind, Recipe, RecipeSet};
pub use store::{ImageStore, Manifest, VerifiedImage};
pub use tree::ImageDigest;

use std::path::PathBuf;

/// Where images are kept unless `GLASSBOX_IMAGES_DIR` says otherwise.
pub const DEFAULT_STORE: &str = "/var/lib/glassbox/images";

/// The environment variable naming the image store.
pub const STORE_ENV: &str = "GLASSBOX_IMAGES_DIR";

/// The store directory: `GLASSBOX_IMAGES_DIR`, else [`DEFAULT_STORE`].
pub fn default_store_dir() -> PathBuf {
    std::env::var_os(STORE_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STORE))
}

/// Everything that can go wrong with an image, naming the step and the image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image recipes {source_name}: {reason}")]
    Recipe { source_name: String, reason: String },
    #[error(
        "image {image}: not built (recipe {recipe_digest}); run `glassbox images build {image}`"
    )]
    NotBuilt {
        image: String,
        recipe_digest: String,
    },
    #[error(
        "image {image}: altered — its tree hashes to {actual}, but it was built as {expected}; rebuild it with `glassbox images build --force {image}`"
    )]
    Altered {
        image: String,
        expected: String,
        actual: String,
    },
    #[error("image {image}: {step}: {path}: {source}")]
    Io {
        image: String,
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image {image}: {step}: {path}: {detail}")]
    Invalid {
        image: String,
        step: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("image {image}: {step}: {detail}")]
    Tool {
        image: String,
        step: &'static str,
        detail: String,
    },
}

impl ImageError {
    pub(crate) fn io(
        image: &str,
        step: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> ImageError {
        let image = image.to_owned();
        let path = path.into();
        move |source| ImageError::Io {
            image,
            step,
            path,
            source,
        }
    }
}
