//! Recipes: how an image is made, as data. A recipe names a Debian suite and the
//! packages to install on a `minbase` system; its digest (over the builder version
//! and the normalised recipe, not the mirror it is fetched from) keys the build
//! cache, so an image is rebuilt only when its recipe changes.

use crate::ImageError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Bumped whenever the builder changes what it makes from the same recipe.
pub const BUILDER_VERSION: &str = "glassbox-images/2";

/// The Debian mirror used unless a recipe or `GLASSBOX_DEBIAN_MIRROR` names one.
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

/// What a tree is for: a sandbox root (gets the sandbox's mount points) or a base
/// for a container image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageKind {
    #[default]
    Runtime,
    Base,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Debian suite, e.g. `bookworm`.
    pub suite: String,
    /// Packages installed on top of `minbase` (with their dependencies).
    pub packages: Vec<String>,
    #[serde(default)]
    pub kind: ImageKind,
    /// Where packages come from (transport only: not part of the recipe digest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<String>,
}

impl Recipe {
    /// Checks names, suite and mirror; `name` is the image's name.
    pub fn check(&self, name: &str) -> Result<(), String> {
        check_name(name)?;
        if self.suite.is_empty()
            || self.suite.len() > 32
            || !self
                .suite
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(format!(
                "{name}: suite {:?} is not a Debian suite name",
                self.suite
            ));
        }
        if self.packages.is_empty() {
            return Err(format!("{name}: packages must name at least one package"));
        }
        for p in &self.packages {
            let ok = (2..=64).contains(&p.len())
                && p.bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                && p.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.')
                });
            if !ok {
                return Err(format!("{name}: {p:?} is not a Debian package name"));
            }
        }
        if let Some(m) = &self.mirror {
            let ok = (m.starts_with("http://") || m.starts_with("https://"))
                && m.len() <= 256
                && m.bytes().all(|b| b.is_ascii_graphic());
            if !ok {
                return Err(format!("{name}: mirror {m:?} must be an http(s) URL"));
            }
        }
        Ok(())
    }

    /// `sha256:<hex>` over the builder version and the normalised recipe.
    pub fn digest(&self) -> String {
        let mut packages = self.packages.clone();
        packages.sort();
        packages.dedup();
        let canonical = serde_json::json!({
            "builder": BUILDER_VERSION,
            "kind": self.kind,
            "suite": self.suite,
            "packages": packages,
        });
        let d = ring::digest::digest(&ring::digest::SHA256, canonical.to_string().as_bytes());
        format!("sha256:{}", hex::encode(d.as_ref()))
    }

    /// The mirror to fetch from: the recipe's, else `GLASSBOX_DEBIAN_MIRROR`, else
    /// [`DEFAULT_MIRROR`].
    pub fn effective_mirror(&self) -> String {
        self.mirror
            .clone()
            .or_else(|| {
                std::env::var("GLASSBOX_DEBIAN_MIRROR")
                    .ok()
                    .filter(|m| !m.is_empty())
            })
            .unwrap_or_else(|| DEFAULT_MIRROR.to_owned())
    }
}

/// `[a-z0-9][a-z0-9-]{0,62}`: image names become directory and tag names.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "image name {name:?} must match [a-z0-9][a-z0-9-]{{0,62}}"
        ))
    }
}

/// Named recipes, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecipeSet {
    recipes: BTreeMap<String, Recipe>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecipeFile {
    images: BTreeMap<String, Recipe>,
}

impl RecipeSet {
    /// Checks every recipe of `recipes`; `source_name` names where they came from.
    pub fn new(
        recipes: BTreeMap<String, Recipe>,
        source_name: &str,
    ) -> Result<RecipeSet, ImageError> {
        for (name, r) in &recipes {
            r.check(name).map_err(|reason| ImageError::Recipe {
                source_name: source_name.to_owned(),
                reason,
            })?;
        }
        Ok(RecipeSet { recipes })
    }

    /// A TOML file of `[images.NAME]` tables.
    pub fn parse(text: &str, source_name: &str) -> Result<RecipeSet, ImageError> {
        let file: RecipeFile = toml::from_str(text).map_err(|e| ImageError::Recipe {
            source_name: source_name.to_owned(),
            reason: e.to_string(),
        })?;
        Self::new(file.images, source_name)
    }

    pub fn get(&self, name: &str) -> Option<&Recipe> {
        self.recipes.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Recipe)> {
        self.recipes.iter()
    }

    pub fn names(&self) -> Vec<String> {
        self.recipes.keys().cloned().collect()
    }

    /// Adds the recipes of `other` (an image of the same name is replaced).
    pub fn extend(&mut self, other: RecipeSet) {
        self.recipes.extend(other.recipes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe(packages: &[&str]) -> Recipe {
        Recipe {
            suite: "bookworm".into(),
            packages: packages.iter().map(|p| (*p).to_owned()).collect(),
            kind: ImageKind::Runtime,
            mirror: None,
        }
    }

    #[test]
    fn digest_ignores_order_duplicates_and_mirror_but_not_content() {
        let a = recipe(&["python3", "python3-pip"]);
        let mut b = recipe(&["python3-pip", "python3", "python3"]);
        b.mirror = Some("http://mirror.example/debian".into());
        assert_eq!(a.digest(), b.digest());
        assert_ne!(a.digest(), recipe(&["python3"]).digest());
        let mut base = a.clone();
        base.kind = ImageKind::Base;
        assert_ne!(a.digest(), base.digest());
        let mut trixie = a.clone();
        trixie.suite = "trixie".into();
        assert_ne!(a.digest(), trixie.digest());
        assert!(a.digest().starts_with("sha256:") && a.digest().len() == 71);
    }

    #[test]
    fn hostile_recipes_are_refused_naming_the_image() {
        for (text, why) in [
            (
                "[images.x]\nsuite=\"bookworm\"\npackages=[]\n",
                "at least one",
            ),
            (
                "[images.x]\nsuite=\"bookworm\"\npackages=[\"a;rm -rf /\"]\n",
                "not a Debian package",
            ),
            (
                "[images.x]\nsuite=\"bookworm\"\npackages=[\"--root=/\"]\n",
                "not a Debian package",
            ),
            (
                "[images.x]\nsuite=\"../etc\"\npackages=[\"bash\"]\n",
                "not a Debian suite",
            ),
            (
                "[images.\"../x\"]\nsuite=\"bookworm\"\npackages=[\"bash\"]\n",
                "must match",
            ),
            (
                "[images.x]\nsuite=\"bookworm\"\npackages=[\"bash\"]\nmirror=\"file:///\"\n",
                "http(s)",
            ),
            (
                "[images.x]\nsuite=\"bookworm\"\npackages=[\"bash\"]\nextra=1\n",
                "unknown field",
            ),
        ] {
            let e = RecipeSet::parse(text, "r.toml")
                .expect_err(text)
                .to_string();
            assert!(
                e.starts_with("image recipes r.toml:") && e.contains(why),
                "{text}: {e}"
            );
        }
    }
}
