//! The runtime registry: which languages exist and how each one runs.
//!
//! It is data, not code (`config/runtimes.toml`, embedded as the default), so adding
//! a language is a configuration change: an image recipe (`[images.NAME]`: Debian
//! suite and packages, built by `glassbox images build`) plus a language entry
//! (`[languages.NAME]`) that names the image its sandboxes run on.

use crate::error::SandboxError;
use glassbox_images::{Recipe, RecipeSet};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The built-in registry.
pub const DEFAULT_RUNTIMES: &str = include_str!("../config/runtimes.toml");

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    pub version: String,
    pub file_name: String,
    pub command: Vec<String>,
    /// The image (a recipe of `[images]`) the sandbox's root is.
    pub image: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    #[serde(default)]
    images: BTreeMap<String, Recipe>,
    languages: BTreeMap<String, Runtime>,
}

/// Language name → [`Runtime`], and the image recipes they run on.
#[derive(Debug, Clone)]
pub struct RuntimeRegistry {
    languages: BTreeMap<String, Runtime>,
    images: RecipeSet,
}

impl RuntimeRegistry {
    /// The embedded defaults (python, node, bash).
    pub fn builtin() -> RuntimeRegistry {
        // The embedded file is covered by a unit test, so this cannot fail at run time.
        Self::parse(DEFAULT_RUNTIMES, Path::new("<builtin>")).unwrap_or_else(|_| RuntimeRegistry {
            languages: BTreeMap::new(),
            images: RecipeSet::default(),
        })
    }

    pub fn load(path: &Path) -> Result<RuntimeRegistry, SandboxError> {
        let text = std::fs::read_to_string(path).map_err(|e| SandboxError::Registry {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<RuntimeRegistry, SandboxError> {
        let err = |reason: String| SandboxError::Registry {
            path: path.to_owned(),
            reason,
        };
        let file: RegistryFile = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        let images = RecipeSet::new(file.images, &path.display().to_string())
            .map_err(|e| err(e.to_string()))?;
        for (name, rt) in &file.languages {
            if rt.command.is_empty() || !rt.command[0].starts_with('/') {
                return Err(err(format!(
                    "{name}: command must start with an absolute path"
                )));
            }
            crate::spec::check_relative_path(&rt.file_name)
                .map_err(|e| err(format!("{name}: {e}")))?;
            if rt.file_name.contains('/') {
                return Err(err(format!("{name}: file_name must be a plain file name")));
            }
            if images.get(&rt.image).is_none() {
                return Err(err(format!(
                    "{name}: image {:?} has no recipe in [images]",
                    rt.image
                )));
            }
        }
        Ok(RuntimeRegistry {
            languages: file.languages,
            images,
        })
    }

    /// The image recipes the languages use.
    pub fn images(&self) -> &RecipeSet {
        &self.images
    }

    /// The image name and recipe `language` runs on.
    pub fn image_of(&self, language: &str) -> Result<(&str, &Recipe), SandboxError> {
        let rt = self.get(language)?;
        let recipe = self
            .images
            .get(&rt.image)
            .ok_or_else(|| SandboxError::Registry {
                path: PathBuf::from("<registry>"),
                reason: format!("{language}: image {:?} has no recipe", rt.image),
            })?;
        Ok((rt.image.as_str(), recipe))
    }

    pub fn get(&self, language: &str) -> Result<&Runtime, SandboxError> {
        self.languages.get(language).ok_or_else(|| {
            SandboxError::UnknownLanguage(language.to_owned(), self.names().join(", "))
        })
    }

    pub fn names(&self) -> Vec<String> {
        self.languages.keys().cloned().collect()
    }
}

impl Runtime {
    /// The argv for a run: the command with `{file}` expanded, then the job's args.
    pub fn argv(&self, args: &[String]) -> Vec<String> {
        let file = format!("/workspace/{}", self.file_name);
        self.command
            .iter()
            .map(|a| a.replace("{file}", &file))
            .chain(args.iter().cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_registry_has_python_node_bash() {
        let r =
            RuntimeRegistry::parse(DEFAULT_RUNTIMES, Path::new("builtin")).expect("builtin parses");
        assert_eq!(r.names(), vec!["bash", "node", "python"]);
        assert_eq!(
            r.get("python").expect("python").argv(&["a".into()]),
            vec!["/usr/bin/python3", "/workspace/main.py", "a"]
        );
        assert!(matches!(
            r.get("cobol"),
            Err(SandboxError::UnknownLanguage(..))
        ));
    }

    #[test]
    fn adding_a_language_is_configuration() {
        let text = format!(
            "{DEFAULT_RUNTIMES}\n[images.perl]\nsuite = \"bookworm\"\npackages = [\"perl\"]\n[languages.perl]\nversion = \"5.36\"\nfile_name = \"main.pl\"\ncommand = [\"/usr/bin/perl\", \"{{file}}\"]\nimage = \"perl\"\n"
        );
        let r = RuntimeRegistry::parse(&text, Path::new("x")).expect("parses");
        assert_eq!(
            r.get("perl").expect("perl").argv(&[]),
            vec!["/usr/bin/perl", "/workspace/main.pl"]
        );
        let (image, recipe) = r.image_of("perl").expect("perl image");
        assert_eq!(
            (image, recipe.packages.as_slice()),
            ("perl", ["perl".to_owned()].as_slice())
        );
    }

    #[test]
    fn bad_registries_are_refused_with_the_reason() {
        for bad in [
            "[languages.x]\nversion=\"1\"\nfile_name=\"m\"\ncommand=[\"python3\"]\nimage=\"x\"\n",
            "[languages.x]\nversion=\"1\"\nfile_name=\"../m\"\ncommand=[\"/bin/x\"]\nimage=\"x\"\n",
            "[languages.x]\nversion=\"1\"\nfile_name=\"m\"\ncommand=[\"/bin/x\"]\nimage=\"x\"\nunknown=1\n",
            // No recipe for the image; no image at all; a host bind (gone).
            "[languages.x]\nversion=\"1\"\nfile_name=\"m\"\ncommand=[\"/bin/x\"]\nimage=\"nope\"\n",
            "[languages.x]\nversion=\"1\"\nfile_name=\"m\"\ncommand=[\"/bin/x\"]\n",
            "[images.x]\nsuite=\"bookworm\"\npackages=[\"x\"]\n[languages.x]\nversion=\"1\"\nfile_name=\"m\"\ncommand=[\"/bin/x\"]\nimage=\"x\"\nbinds=[\"/usr\"]\n",
            // A hostile recipe.
            "[images.x]\nsuite=\"bookworm\"\npackages=[\"x;id\"]\n[languages.x]\nversion=\"1\"\nfile_name=\"m\"\ncommand=[\"/bin/x\"]\nimage=\"x\"\n",
        ] {
            let e = RuntimeRegistry::parse(bad, Path::new("rt.toml")).expect_err(bad);
            assert!(
                e.to_string().starts_with("runtime registry rt.toml:"),
                "{e}"
            );
        }
    }
}
