//! What a caller may ask to run, parsed once.
//!
//! Parse, don't validate: [`JobRequest`] is the wire shape (REST body, MCP
//! arguments); [`JobRequest::parse`] turns it into a [`JobSpec`] built from
//! newtypes ([`Language`], [`WorkspacePath`], [`EnvName`], [`PackageSpec`],
//! [`SecretName`]) that can only hold valid values. The command API, MCP and
//! the sandbox core use these same types and rules: one set of validation
//! rules, and every refusal names the member.

use crate::catalogue::{Dependency, Limits};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

pub const MAX_FILES: usize = 64;
pub const MAX_ARGS: usize = 256;
pub const MAX_ENV: usize = 128;
pub const MAX_DEPENDENCIES: usize = 64;
pub const MAX_SECRETS: usize = 32;
/// Egress destinations a job or session may ask for.
pub const MAX_EGRESS: usize = 32;
/// The largest body of a request to, or an answer from, a session's exposed
/// port (service mode).
pub const MAX_SERVICE_BODY: usize = 1 << 20;
/// What the API document shows for `egress`.
const EGRESS_EXAMPLE: [&str; 1] = ["api.example.com:443"];
/// The longest egress destination (so a host is never longer than DNS allows).
pub const MAX_EGRESS_TARGET: usize = 200;
/// Largest integer the ledger stores exactly (2^53 - 1).
pub const MAX_INTEGER: u64 = 9_007_199_254_740_991;
/// Longest input file path (bytes; input paths are ASCII).
pub const MAX_INPUT_PATH: usize = 255;

/// The rules below as JSON Schema patterns (ECMA 262, as OpenAPI documents
/// use them). Each sits next to the parse function it mirrors, the request
/// types carry them into the API document, and the tests check that each
/// pattern accepts exactly what its parse function accepts.
pub mod pattern {
    /// Language, ecosystem and package names.
    pub const NAME: &str = "^[A-Za-z0-9_][A-Za-z0-9_.-]*$";
    /// Environment variable and secret names.
    pub const ENV_NAME: &str = "^[A-Za-z_][A-Za-z0-9_]*$";
    /// Environment names the runner keeps for itself.
    pub const RESERVED_ENV_NAME: &str = "^GLASSBOX_";
    /// Package versions.
    pub const VERSION: &str = "^[A-Za-z0-9.+!_-]+$";
    /// Any text without NUL.
    pub const NO_NUL: &str = "^[^\\u0000]*$";
    /// Input file paths: portable names (letters, digits, `_`, `-`, `.`, not
    /// starting with `.` or `-`) joined by `/`.
    pub const INPUT_PATH: &str = "^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*$";
    /// Input paths where the runner writes (the program and `out/`).
    pub const RESERVED_INPUT_PATH: &str = "^(out(/|$)|main(\\.[^/]*)?$)";
    /// Standard base64, canonical: padded, unused bits zero.
    pub const BASE64: &str =
        "^([A-Za-z0-9+/]{4})*([A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?$";
    /// Text without control characters (Unicode category Cc).
    pub const NO_CONTROL: &str = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$";
    /// Egress destinations: `host:port` or `*.domain:port` (labels of letters,
    /// digits, `_` and `-`, an optional trailing dot, a port 1–65535 without
    /// leading zeros).
    pub const EGRESS_TARGET: &str = "^(\\*\\.)?[A-Za-z0-9_-]{1,63}(\\.[A-Za-z0-9_-]{1,63})*\\.?:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})$";
}

/// Deserializers that take a JSON object only. (Serde's derive also builds a
/// struct from an array of its fields in order; no request schema allows that,
/// so neither do the parsers.)
pub mod object {
    use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
    use std::marker::PhantomData;

    /// `T`, from a JSON object.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Object<T>(pub T);

    struct ObjectVisitor<T>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
        }
    }

    impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_map(ObjectVisitor(PhantomData)).map(Object)
        }
    }

    /// For `#[serde(deserialize_with = "object::one")]`.
    pub fn one<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<T, D::Error> {
        Object::<T>::deserialize(d).map(|o| o.0)
    }

    /// For `#[serde(deserialize_with = "object::many")]`: an array of objects.
    pub fn many<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
        Vec::<Object<T>>::deserialize(d).map(|v| v.into_iter().map(|o| o.0).collect())
    }
}

/// A refused request: which member, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{member}: {reason}")]
pub struct Invalid {
    pub member: String,
    pub reason: String,
}

fn invalid<T>(member: impl Into<String>, reason: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid {
        member: member.into(),
        reason: reason.into(),
    })
}

fn is_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_alphanumeric() || b == b'_' || (i > 0 && matches!(b, b'-' | b'.'))
        })
}

macro_rules! newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

newtype!(
    /// A runtime name: 1-32 letters, digits, `_`, or (not first) `-` `.`.
    Language
);
newtype!(
    /// A relative path inside `/workspace`: no `..`, `.` or empty components,
    /// not absolute, no control characters or backslashes, at most 255 bytes.
    WorkspacePath
);
newtype!(
    /// An environment variable (or secret) name: letters, digits and `_`, not
    /// starting with a digit, at most 128 bytes.
    EnvName
);

/// A secret's name follows the environment variable rules.
pub type SecretName = EnvName;

impl Language {
    pub fn parse(s: &str) -> Result<Language, String> {
        if is_name(s, 32) {
            Ok(Language(s.to_owned()))
        } else {
            Err("1-32 letters, digits, '_', '-' or '.'".into())
        }
    }
}

impl WorkspacePath {
    pub fn parse(p: &str) -> Result<WorkspacePath, String> {
        let ok = !p.is_empty()
            && p.len() <= 255
            && !p.starts_with('/')
            && p.split('/').all(|c| {
                !c.is_empty()
                    && c != "."
                    && c != ".."
                    && !c.chars().any(|ch| ch.is_control() || ch == '\\')
            });
        if ok {
            Ok(WorkspacePath(p.to_owned()))
        } else {
            Err("must be a relative path without '..' or empty components".into())
        }
    }

    /// A client's input file: portable names ([`pattern::INPUT_PATH`]: ASCII
    /// letters, digits, `_`, `-`, `.`, no component starting with `.` or `-`,
    /// at most [`MAX_INPUT_PATH`] bytes), and not where the runner writes.
    pub fn parse_input(p: &str) -> Result<WorkspacePath, String> {
        let portable = |c: &str| {
            c.bytes().enumerate().all(|(i, b)| {
                b.is_ascii_alphanumeric() || b == b'_' || (i > 0 && matches!(b, b'-' | b'.'))
            })
        };
        if p.is_empty()
            || p.len() > MAX_INPUT_PATH
            || !p.split('/').all(|c| !c.is_empty() && portable(c))
        {
            return Err(format!(
                "1-{MAX_INPUT_PATH} characters: names of letters, digits, '_', '-' and '.' \
                 (not starting with '.' or '-') joined by '/'"
            ));
        }
        let path = WorkspacePath::parse(p)?;
        match path.reserved() {
            Some(why) => Err(why),
            None => Ok(path),
        }
    }

    /// Where the runner itself writes — the program (`main`, `main.<ext>`),
    /// `out/`, `.secrets/`, `.deps/` and `.glassbox/` — is not for inputs.
    pub fn reserved(&self) -> Option<String> {
        let top = self.0.split('/').next().unwrap_or(&self.0);
        let reserved = matches!(top, "out" | ".secrets" | ".deps" | ".glassbox")
            || (self.0 == top && (top == "main" || top.starts_with("main.")));
        reserved.then(|| format!("{top} is reserved for the runner"))
    }

    /// The directories above this path, innermost first.
    pub fn parents(&self) -> impl Iterator<Item = &str> {
        let mut rest = self.0.as_str();
        std::iter::from_fn(move || {
            let (parent, _) = rest.rsplit_once('/')?;
            rest = parent;
            Some(parent)
        })
    }
}

impl EnvName {
    pub fn parse(s: &str) -> Result<EnvName, String> {
        let ok = !s.is_empty()
            && s.len() <= 128
            && !s.as_bytes()[0].is_ascii_digit()
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if ok {
            Ok(EnvName(s.to_owned()))
        } else {
            Err("not a variable name (letters, digits, '_')".into())
        }
    }
}

/// A package to install: ecosystem, name, optional exact version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackageSpec {
    ecosystem: String,
    name: String,
    version: Option<String>,
}

impl PackageSpec {
    pub fn parse(
        ecosystem: &str,
        name: &str,
        version: Option<&str>,
    ) -> Result<PackageSpec, (&'static str, &'static str)> {
        if !is_name(ecosystem, 32) {
            return Err(("ecosystem", "not a name"));
        }
        if !is_name(name, 128) {
            return Err(("name", "not a package name"));
        }
        if let Some(v) = version
            && (v.is_empty()
                || v.len() > 64
                || !v.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'+' | b'!')
                }))
        {
            return Err(("version", "not a version"));
        }
        Ok(PackageSpec {
            ecosystem: ecosystem.to_owned(),
            name: name.to_owned(),
            version: version.map(str::to_owned),
        })
    }

    pub fn dependency(&self) -> Dependency {
        Dependency {
            ecosystem: self.ecosystem.clone(),
            name: self.name.clone(),
            version: self.version.clone(),
        }
    }

    /// `name` or `name==version` (what pip is given).
    pub fn requirement(&self) -> String {
        match &self.version {
            Some(v) => format!("{}=={v}", self.name),
            None => self.name.clone(),
        }
    }
}

/// `POST /v1/jobs` body (and what MCP's `run_code` / `submit_job` map to).
///
/// The schema attributes state the rules [`JobRequest::parse`] applies to one
/// member at a time; the API document is generated from them. What a schema
/// cannot state — paths or secrets named twice, a path that is both a file
/// and a directory — [`JobRequest::parse`] refuses on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// The runtime: python, node or bash (the tenant's policy decides which are allowed).
    #[schemars(length(min = 1, max = 32), regex(pattern = pattern::NAME), example = &"python")]
    pub language: String,
    /// The program's source.
    #[schemars(length(min = 1), example = &"print('hello from the sandbox')")]
    pub code: String,
    /// Standard input for the program.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Program arguments (no NUL).
    #[serde(default)]
    #[schemars(length(max = MAX_ARGS), inner(regex(pattern = pattern::NO_NUL)))]
    pub args: Vec<String>,
    /// Environment variables: names of letters, digits and `_`, not starting
    /// with a digit or `GLASSBOX_`; values without NUL.
    #[serde(default)]
    #[schemars(transform = env_schema)]
    pub env: BTreeMap<String, String>,
    /// Input files placed under /workspace before the run.
    #[serde(default, deserialize_with = "object::many")]
    #[schemars(length(max = MAX_FILES))]
    pub files: Vec<FileInput>,
    /// Packages to install (checked against the tenant's allowlist).
    #[serde(default, deserialize_with = "object::many")]
    #[schemars(length(max = MAX_DEPENDENCIES))]
    pub dependencies: Vec<DependencyInput>,
    /// Secrets to deliver (approved by policy): a name, or {name, mode}.
    #[serde(default)]
    #[schemars(length(max = MAX_SECRETS))]
    pub secrets: Vec<SecretInput>,
    /// Requested limits; the tenant's defaults fill in the rest.
    #[serde(default, deserialize_with = "object::one")]
    pub limits: Limits,
    /// Destinations the program may reach through its egress proxy
    /// (`host:port` or `*.domain:port`); `glassbox.egress` decides each against
    /// the tenant's allowlist. None: no network at all.
    #[serde(default)]
    #[schemars(length(max = MAX_EGRESS), inner(length(min = 1, max = MAX_EGRESS_TARGET), regex(pattern = pattern::EGRESS_TARGET)), example = EGRESS_EXAMPLE)]
    pub egress: Vec<String>,
}

fn env_schema(schema: &mut schemars::Schema) {
    schema.insert("maxProperties".into(), MAX_ENV.into());
    schema.insert(
        "propertyNames".into(),
        serde_json::json!({
            "minLength": 1,
            "maxLength": 128,
            "pattern": pattern::ENV_NAME,
            "not": {"pattern": pattern::RESERVED_ENV_NAME},
        }),
    );
    schema.insert(
        "additionalProperties".into(),
        serde_json::json!({"type": "string", "pattern": pattern::NO_NUL}),
    );
}

/// An input file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(transform = file_schema)]
pub struct FileInput {
    /// Relative path under `/workspace`: names of letters, digits, `_`, `-`
    /// and `.` (not starting with `.` or `-`) joined by `/`; not `main`,
    /// `main.*` or under `out/`.
    #[schemars(length(min = 1, max = MAX_INPUT_PATH), regex(pattern = pattern::INPUT_PATH))]
    pub path: String,
    /// The content, as `encoding` says (base64: standard, padded).
    pub content: String,
    #[serde(default)]
    pub encoding: Encoding,
}

fn file_schema(schema: &mut schemars::Schema) {
    if let Some(path) = schema
        .get_mut("properties")
        .and_then(|p| p.get_mut("path"))
        .and_then(|p| p.as_object_mut())
    {
        path.insert(
            "not".into(),
            serde_json::json!({"pattern": pattern::RESERVED_INPUT_PATH}),
        );
    }
    // Base64 content must decode.
    schema.insert(
        "if".into(),
        serde_json::json!({"properties": {"encoding": {"const": "base64"}}, "required": ["encoding"]}),
    );
    schema.insert(
        "then".into(),
        serde_json::json!({"properties": {"content": {"pattern": pattern::BASE64}}}),
    );
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    #[default]
    Utf8,
    Base64,
}

/// A package to install.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DependencyInput {
    #[serde(default = "pypi")]
    #[schemars(length(min = 1, max = 32), regex(pattern = pattern::NAME))]
    pub ecosystem: String,
    #[schemars(length(min = 1, max = 128), regex(pattern = pattern::NAME))]
    pub name: String,
    /// An exact version.
    #[serde(default)]
    #[schemars(length(min = 1, max = 64), regex(pattern = pattern::VERSION))]
    pub version: Option<String>,
}

fn pypi() -> String {
    "pypi".into()
}

/// A secret: its name (delivered as an environment variable), or its name
/// and how it is delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum SecretInput {
    Name(#[schemars(length(min = 1, max = 128), regex(pattern = pattern::ENV_NAME))] String),
    Spec(SecretSpec),
}

impl<'de> Deserialize<'de> for SecretInput {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = SecretInput;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a secret name or {\"name\", \"mode\"}")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SecretInput, E> {
                Ok(SecretInput::Name(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<SecretInput, A::Error> {
                SecretSpec::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(SecretInput::Spec)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretSpec {
    #[schemars(length(min = 1, max = 128), regex(pattern = pattern::ENV_NAME))]
    pub name: String,
    #[serde(default)]
    pub mode: SecretMode,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SecretMode {
    /// An environment variable holding the value.
    #[default]
    Env,
    /// A file `.secrets/<NAME>` holding the value.
    File,
    /// An environment variable holding a placeholder; the sandbox's egress
    /// proxy puts the value in place of it only in request headers to the
    /// hosts the tenant's policy names for the secret (the sandbox never
    /// holds the value).
    Brokered,
}

impl SecretMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SecretMode::Env => "env",
            SecretMode::File => "file",
            SecretMode::Brokered => "brokered",
        }
    }
}

impl SecretInput {
    pub fn name(&self) -> &str {
        match self {
            SecretInput::Name(n) => n,
            SecretInput::Spec(s) => &s.name,
        }
    }
    pub fn mode(&self) -> SecretMode {
        match self {
            SecretInput::Name(_) => SecretMode::Env,
            SecretInput::Spec(s) => s.mode,
        }
    }
}

impl FileInput {
    pub fn decoded(&self) -> Result<Vec<u8>, base64::DecodeError> {
        use base64::Engine as _;
        match self.encoding {
            Encoding::Utf8 => Ok(self.content.as_bytes().to_vec()),
            Encoding::Base64 => base64::engine::general_purpose::STANDARD.decode(&self.content),
        }
    }
}

/// An input file, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFileSpec {
    pub path: WorkspacePath,
    pub content: Vec<u8>,
}

/// A secret to deliver, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRequest {
    pub name: SecretName,
    pub mode: SecretMode,
}

/// A job request that passed every rule the rest of the system relies on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSpec {
    pub language: Language,
    pub code: String,
    pub stdin: Option<String>,
    pub args: Vec<String>,
    pub env: BTreeMap<EnvName, String>,
    pub files: Vec<InputFileSpec>,
    pub dependencies: Vec<PackageSpec>,
    pub secrets: Vec<SecretRequest>,
    pub limits: Limits,
    pub egress: Vec<EgressTarget>,
    /// The request as sent (what idempotency compares).
    pub request: JobRequest,
}

impl JobRequest {
    /// Parses the request; a refusal names the member.
    pub fn parse(self) -> Result<JobSpec, Invalid> {
        let language = Language::parse(&self.language).map_err(|r| Invalid {
            member: "language".into(),
            reason: r,
        })?;
        if self.code.is_empty() {
            return invalid("code", "must not be empty");
        }
        if self.args.len() > MAX_ARGS {
            return invalid("args", format!("at most {MAX_ARGS}"));
        }
        if let Some(i) = self.args.iter().position(|a| a.contains('\0')) {
            return invalid(format!("args[{i}]"), "contains a NUL character");
        }
        let env = parse_env(&self.env)?;
        if self.files.len() > MAX_FILES {
            return invalid("files", format!("at most {MAX_FILES}"));
        }
        let mut files = Vec::with_capacity(self.files.len());
        let mut seen = BTreeSet::new();
        for (i, f) in self.files.iter().enumerate() {
            let member = format!("files[{i}].path");
            let path = WorkspacePath::parse_input(&f.path).map_err(|r| Invalid {
                member: member.clone(),
                reason: r,
            })?;
            if !seen.insert(f.path.clone()) {
                return invalid(member, format!("{} appears twice", f.path));
            }
            let content = f.decoded().map_err(|_| Invalid {
                member: format!("files[{i}].content"),
                reason: "not valid base64".into(),
            })?;
            files.push(InputFileSpec { path, content });
        }
        // A path cannot be both a file and a directory of another file.
        for (i, f) in files.iter().enumerate() {
            if let Some(parent) = f.path.parents().find(|p| seen.contains(*p)) {
                return invalid(
                    format!("files[{i}].path"),
                    format!("{parent} is a file, so it cannot be a directory"),
                );
            }
        }
        let dependencies = parse_dependencies(&self.dependencies)?;
        let secrets = parse_secrets(&self.secrets)?;
        self.limits.check_floor().map_err(floor)?;
        check_integers(&self.limits)?;
        Ok(JobSpec {
            language,
            code: self.code.clone(),
            stdin: self.stdin.clone(),
            args: self.args.clone(),
            env,
            files,
            dependencies,
            secrets,
            limits: self.limits.clone(),
            egress: parse_egress(&self.egress)?,
            request: self,
        })
    }
}

/// Egress destinations (each by [`EgressTarget::parse`]); the same one twice
/// is kept once.
pub fn parse_egress(targets: &[String]) -> Result<Vec<EgressTarget>, Invalid> {
    if targets.len() > MAX_EGRESS {
        return invalid("egress", format!("at most {MAX_EGRESS}"));
    }
    let mut out: Vec<EgressTarget> = Vec::with_capacity(targets.len());
    for (i, t) in targets.iter().enumerate() {
        let t = EgressTarget::parse(t).map_err(|r| Invalid {
            member: format!("egress[{i}]"),
            reason: r,
        })?;
        if !out.contains(&t) {
            out.push(t);
        }
    }
    Ok(out)
}

/// Environment variables: names by the env rule, not `GLASSBOX_*`, values
/// without NUL.
fn parse_env(env: &BTreeMap<String, String>) -> Result<BTreeMap<EnvName, String>, Invalid> {
    if env.len() > MAX_ENV {
        return invalid("env", format!("at most {MAX_ENV} variables"));
    }
    let mut out = BTreeMap::new();
    for (k, v) in env {
        let name = EnvName::parse(k).map_err(|r| Invalid {
            member: "env".into(),
            reason: format!("{k:?} is {r}"),
        })?;
        if k.starts_with("GLASSBOX_") {
            return invalid("env", format!("{k} is reserved"));
        }
        if v.contains('\0') {
            return invalid(format!("env.{k}"), "contains a NUL character");
        }
        out.insert(name, v.clone());
    }
    Ok(out)
}

fn parse_dependencies(deps: &[DependencyInput]) -> Result<Vec<PackageSpec>, Invalid> {
    if deps.len() > MAX_DEPENDENCIES {
        return invalid("dependencies", format!("at most {MAX_DEPENDENCIES}"));
    }
    deps.iter()
        .enumerate()
        .map(|(i, d)| {
            PackageSpec::parse(&d.ecosystem, &d.name, d.version.as_deref()).map_err(|(m, r)| {
                Invalid {
                    member: format!("dependencies[{i}].{m}"),
                    reason: r.into(),
                }
            })
        })
        .collect()
}

fn parse_secrets(secrets: &[SecretInput]) -> Result<Vec<SecretRequest>, Invalid> {
    if secrets.len() > MAX_SECRETS {
        return invalid("secrets", format!("at most {MAX_SECRETS}"));
    }
    let mut out = Vec::with_capacity(secrets.len());
    let mut names = BTreeSet::new();
    for (i, s) in secrets.iter().enumerate() {
        let name = EnvName::parse(s.name()).map_err(|_| Invalid {
            member: format!("secrets[{i}]"),
            reason: "not a secret name (letters, digits, '_')".into(),
        })?;
        if !names.insert(s.name().to_owned()) {
            return invalid(
                format!("secrets[{i}]"),
                format!("{} appears twice", s.name()),
            );
        }
        out.push(SecretRequest {
            name,
            mode: s.mode(),
        });
    }
    Ok(out)
}

/// A floor refusal (`limits.<member>: reason`) as the member it names.
fn floor(e: String) -> Invalid {
    let (member, reason) = e.split_once(": ").unwrap_or(("limits", e.as_str()));
    Invalid {
        member: member.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Every limit is 1 to 2^53 - 1 (what the ledger stores exactly).
fn check_integers(limits: &impl Serialize) -> Result<(), Invalid> {
    if let serde_json::Value::Object(m) = serde_json::to_value(limits).unwrap_or_default() {
        for (k, v) in m {
            if let Some(n) = v.as_u64()
                && (n == 0 || n > MAX_INTEGER)
            {
                return invalid(
                    format!("limits.{k}"),
                    format!("must be between 1 and {MAX_INTEGER}"),
                );
            }
        }
    }
    Ok(())
}

/// `POST /v1/sessions` body (and MCP's `create_session`).
///
/// A session is opened with the same rules as a job is submitted: the same
/// environment, dependency and secret rules, and limits of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    /// The runtime: python, node or bash. Code execs in python and node keep
    /// their interpreter state between calls.
    #[schemars(length(min = 1, max = 32), regex(pattern = pattern::NAME), example = &"python")]
    pub language: String,
    /// Environment variables: names of letters, digits and `_`, not starting
    /// with a digit or `GLASSBOX_`; values without NUL.
    #[serde(default)]
    #[schemars(transform = env_schema)]
    pub env: BTreeMap<String, String>,
    /// Packages installed once, when the session opens (checked against the
    /// tenant's allowlist).
    #[serde(default, deserialize_with = "object::many")]
    #[schemars(length(max = MAX_DEPENDENCIES))]
    pub dependencies: Vec<DependencyInput>,
    /// Secrets to deliver (approved by policy): a name, or {name, mode}.
    #[serde(default)]
    #[schemars(length(max = MAX_SECRETS))]
    pub secrets: Vec<SecretInput>,
    /// Requested limits; the tenant's session defaults fill in the rest.
    #[serde(default, deserialize_with = "object::one")]
    pub limits: crate::catalogue::SessionLimits,
    /// Destinations the session may reach through its egress proxy, as for a
    /// job; changeable while it runs (`PATCH /v1/sessions/{id}/egress`).
    #[serde(default)]
    #[schemars(length(max = MAX_EGRESS), inner(length(min = 1, max = MAX_EGRESS_TARGET), regex(pattern = pattern::EGRESS_TARGET)), example = EGRESS_EXAMPLE)]
    pub egress: Vec<String>,
}

/// A session request that passed every rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSpec {
    pub language: Language,
    pub env: BTreeMap<EnvName, String>,
    pub dependencies: Vec<PackageSpec>,
    pub secrets: Vec<SecretRequest>,
    pub limits: crate::catalogue::SessionLimits,
    pub egress: Vec<EgressTarget>,
    /// The request as sent (what idempotency compares).
    pub request: SessionRequest,
}

impl SessionRequest {
    /// Parses the request; a refusal names the member.
    pub fn parse(self) -> Result<SessionSpec, Invalid> {
        let language = Language::parse(&self.language).map_err(|r| Invalid {
            member: "language".into(),
            reason: r,
        })?;
        let env = parse_env(&self.env)?;
        let dependencies = parse_dependencies(&self.dependencies)?;
        let secrets = parse_secrets(&self.secrets)?;
        self.limits.check_floor().map_err(floor)?;
        check_integers(&self.limits)?;
        Ok(SessionSpec {
            language,
            env,
            dependencies,
            secrets,
            limits: self.limits.clone(),
            egress: parse_egress(&self.egress)?,
            request: self,
        })
    }
}

/// `POST /v1/sessions/{id}/exec` body (and MCP's `session_exec`): code for
/// the session's interpreter, or a shell command — exactly one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(transform = exec_schema)]
pub struct ExecRequest {
    /// Code for the session's interpreter (python and node keep their state
    /// between execs; a final expression's value is printed).
    #[serde(default)]
    #[schemars(length(min = 1), example = &"x = 41\nx + 1")]
    pub code: Option<String>,
    /// A shell command (`/bin/sh -c`) run in `/workspace`.
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub command: Option<String>,
    /// Standard input.
    #[serde(default)]
    pub stdin: Option<String>,
    /// At most this long (the session's `exec_timeout_ms` caps it).
    #[serde(default)]
    #[schemars(range(min = 1, max = MAX_INTEGER))]
    pub timeout_ms: Option<u64>,
}

fn exec_schema(schema: &mut schemars::Schema) {
    schema.insert(
        "oneOf".into(),
        // Exactly one of the two, and it a string (a member sent as null is absent).
        serde_json::json!([
            {"required": ["code"], "properties": {"code": {"type": "string"}}},
            {"required": ["command"], "properties": {"command": {"type": "string"}}},
        ]),
    );
}

/// What an exec runs, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecSource {
    Code(String),
    Command(String),
}

impl ExecSource {
    pub fn kind(&self) -> &'static str {
        match self {
            ExecSource::Code(_) => "code",
            ExecSource::Command(_) => "command",
        }
    }
    pub fn text(&self) -> &str {
        match self {
            ExecSource::Code(t) | ExecSource::Command(t) => t,
        }
    }
}

impl ExecRequest {
    pub fn parse(&self) -> Result<ExecSource, Invalid> {
        match (&self.code, &self.command) {
            (Some(c), None) if !c.is_empty() => Ok(ExecSource::Code(c.clone())),
            (None, Some(c)) if !c.is_empty() => Ok(ExecSource::Command(c.clone())),
            (Some(_), None) => invalid("code", "must not be empty"),
            (None, Some(_)) => invalid("command", "must not be empty"),
            _ => invalid("code", "give code or a command (exactly one)"),
        }
        .and_then(|s| match self.timeout_ms {
            Some(t) if t == 0 || t > MAX_INTEGER => {
                invalid("timeout_ms", format!("must be between 1 and {MAX_INTEGER}"))
            }
            _ => Ok(s),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(v: serde_json::Value) -> JobRequest {
        let mut base = json!({"language": "python", "code": "print(1)"});
        if let (Some(b), Some(extra)) = (base.as_object_mut(), v.as_object()) {
            b.extend(extra.clone());
        }
        serde_json::from_value(base).expect("request")
    }

    fn refused(v: serde_json::Value) -> Invalid {
        req(v).parse().expect_err("refused")
    }

    #[test]
    fn a_good_request_parses_into_typed_parts() {
        let s = req(json!({"args": ["a"], "env": {"MODE": "x"},
                           "files": [{"path": "data/in.csv", "content": "aGk=", "encoding": "base64"}],
                           "dependencies": [{"name": "six", "version": "1.16.0"}],
                           "secrets": ["API_KEY", {"name": "DB", "mode": "file"}],
                           "limits": {"wall_time_ms": 2000}}))
        .parse()
        .expect("parses");
        assert_eq!(s.language.as_str(), "python");
        assert_eq!(s.files[0].path.as_str(), "data/in.csv");
        assert_eq!(s.files[0].content, b"hi");
        assert_eq!(s.dependencies[0].requirement(), "six==1.16.0");
        assert_eq!(s.secrets[1].mode, SecretMode::File);
        assert_eq!(
            s.env.keys().map(EnvName::as_str).collect::<Vec<_>>(),
            ["MODE"]
        );
    }

    #[test]
    fn every_refusal_names_its_member() {
        for (body, member) in [
            (json!({"language": "py thon"}), "language"),
            (json!({"code": ""}), "code"),
            (json!({"args": ["a\u{0}b"]}), "args[0]"),
            (json!({"env": {"1X": "v"}}), "env"),
            (json!({"env": {"GLASSBOX_X": "v"}}), "env"),
            (json!({"env": {"X": "a\u{0}"}}), "env.X"),
            (
                json!({"files": [{"path": "../etc", "content": ""}]}),
                "files[0].path",
            ),
            (
                json!({"files": [{"path": ".secrets/k", "content": ""}]}),
                "files[0].path",
            ),
            (
                json!({"files": [{"path": "main.py", "content": ""}]}),
                "files[0].path",
            ),
            (
                json!({"files": [{"path": "a", "content": ""}, {"path": "a", "content": ""}]}),
                "files[1].path",
            ),
            (
                json!({"files": [{"path": "a/b", "content": ""}, {"path": "a", "content": ""}]}),
                "files[0].path",
            ),
            (
                json!({"files": [{"path": "x", "content": "!", "encoding": "base64"}]}),
                "files[0].content",
            ),
            (
                json!({"dependencies": [{"name": "-x"}]}),
                "dependencies[0].name",
            ),
            (
                json!({"dependencies": [{"name": "x", "version": "1 0"}]}),
                "dependencies[0].version",
            ),
            (json!({"secrets": ["a-b"]}), "secrets[0]"),
            (json!({"secrets": ["A", "A"]}), "secrets[1]"),
            (
                json!({"limits": {"memory_bytes": 1024}}),
                "limits.memory_bytes",
            ),
            (
                json!({"limits": {"wall_time_ms": 0}}),
                "limits.wall_time_ms",
            ),
            (
                json!({"limits": {"output_files": 9007199254740992_u64}}),
                "limits.output_files",
            ),
        ] {
            assert_eq!(refused(body.clone()).member, member, "{body}");
        }
    }

    #[test]
    fn a_session_request_follows_the_job_rules_and_its_own_limits() {
        let ok: SessionRequest = serde_json::from_value(json!({
            "language": "python", "env": {"MODE": "x"},
            "dependencies": [{"name": "six"}], "secrets": ["API_KEY"],
            "limits": {"idle_timeout_secs": 300, "memory_bytes": 134217728}
        }))
        .expect("request");
        let spec = ok.parse().expect("parses");
        assert_eq!(spec.limits.idle_timeout_secs, Some(300));
        assert_eq!(spec.dependencies[0].requirement(), "six");
        for (body, member) in [
            (json!({"language": "py thon"}), "language"),
            (
                json!({"language": "python", "env": {"GLASSBOX_X": "1"}}),
                "env",
            ),
            (
                json!({"language": "python", "secrets": ["A", "A"]}),
                "secrets[1]",
            ),
            (
                json!({"language": "python", "limits": {"memory_bytes": 1}}),
                "limits.memory_bytes",
            ),
            (
                json!({"language": "python", "limits": {"idle_timeout_secs": 0}}),
                "limits.idle_timeout_secs",
            ),
        ] {
            let r: SessionRequest = serde_json::from_value(body.clone()).expect("shape");
            assert_eq!(r.parse().expect_err("refused").member, member, "{body}");
        }
        assert!(
            serde_json::from_value::<SessionRequest>(
                json!({"language": "python", "limits": {"wall_time_ms": 1}})
            )
            .is_err()
        );
    }

    #[test]
    fn an_exec_is_code_or_a_command_exactly() {
        let parse = |v: serde_json::Value| {
            serde_json::from_value::<ExecRequest>(v)
                .expect("shape")
                .parse()
        };
        assert_eq!(
            parse(json!({"code": "1"})),
            Ok(ExecSource::Code("1".into()))
        );
        assert_eq!(
            parse(json!({"command": "ls", "timeout_ms": 5})),
            Ok(ExecSource::Command("ls".into()))
        );
        for (body, member) in [
            (json!({}), "code"),
            (json!({"code": "1", "command": "ls"}), "code"),
            (json!({"code": ""}), "code"),
            (json!({"command": ""}), "command"),
            (json!({"code": "1", "timeout_ms": 0}), "timeout_ms"),
        ] {
            assert_eq!(
                parse(body.clone()).expect_err("refused").member,
                member,
                "{body}"
            );
        }
    }

    #[test]
    fn newtypes_hold_only_valid_values() {
        assert!(WorkspacePath::parse("a/b.txt").is_ok());
        for bad in ["", "/etc/passwd", "../x", "a//b", "./a", "a\\b", "a\nb"] {
            assert!(WorkspacePath::parse(bad).is_err(), "{bad:?}");
        }
        let long = "x".repeat(256);
        assert!(WorkspacePath::parse(&long).is_err());
        assert_eq!(
            WorkspacePath::parse("a/b/c")
                .map(|p| p.parents().map(str::to_owned).collect::<Vec<_>>()),
            Ok(vec!["a/b".to_owned(), "a".to_owned()])
        );
        assert!(EnvName::parse("_X1").is_ok());
        assert!(EnvName::parse("1X").is_err());
        assert!(Language::parse("node-20").is_ok());
        assert!(Language::parse("-x").is_err());
    }
}

/// Each schema pattern accepts exactly what its parse function accepts, over
/// strings drawn from an alphabet of every character class the rules care
/// about (so the API document and the parser cannot drift apart).
#[cfg(test)]
mod pattern_tests {
    use super::*;
    use proptest::prelude::*;
    use regex_automata::meta::Regex;

    fn re(p: &str) -> Regex {
        Regex::new(p).expect("pattern compiles")
    }

    fn text(max: usize) -> impl Strategy<Value = String> {
        let alphabet: Vec<char> = "aZ09_-./+=!:~ \\\n\t\u{0}\u{7f}\u{85}é€😀GLASSBOX_outmain"
            .chars()
            .collect();
        proptest::collection::vec(proptest::sample::select(alphabet), 0..max)
            .prop_map(|v| v.into_iter().collect())
    }

    fn chars(s: &str) -> usize {
        s.chars().count()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn names(s in text(40)) {
            let schema = re(pattern::NAME).is_match(&s) && (1..=32).contains(&chars(&s));
            prop_assert_eq!(schema, Language::parse(&s).is_ok(), "{:?}", s);
        }

        #[test]
        fn env_names(s in text(20)) {
            let schema = re(pattern::ENV_NAME).is_match(&s)
                && (1..=128).contains(&chars(&s));
            prop_assert_eq!(schema, EnvName::parse(&s).is_ok(), "{:?}", s);
        }

        #[test]
        fn input_paths(s in text(24)) {
            let schema = re(pattern::INPUT_PATH).is_match(&s)
                && !re(pattern::RESERVED_INPUT_PATH).is_match(&s)
                && (1..=MAX_INPUT_PATH).contains(&chars(&s));
            prop_assert_eq!(schema, WorkspacePath::parse_input(&s).is_ok(), "{:?}", s);
        }

        #[test]
        fn versions(s in text(12)) {
            let schema = re(pattern::VERSION).is_match(&s) && (1..=64).contains(&chars(&s));
            prop_assert_eq!(schema, PackageSpec::parse("pypi", "x", Some(&s)).is_ok(), "{:?}", s);
        }

        #[test]
        fn base64_content(bytes in proptest::collection::vec(any::<u8>(), 0..12), s in text(12)) {
            use base64::Engine as _;
            let good = base64::engine::general_purpose::STANDARD.encode(&bytes);
            prop_assert!(re(pattern::BASE64).is_match(&good));
            for candidate in [good.clone(), s, format!("{good}="), good.replace('=', "")] {
                let schema = re(pattern::BASE64).is_match(&candidate);
                let decodes = base64::engine::general_purpose::STANDARD.decode(&candidate).is_ok();
                prop_assert_eq!(schema, decodes, "{:?}", candidate);
            }
        }

        #[test]
        fn egress_targets(s in proptest::collection::vec(proptest::sample::select("aZ09_-.*:5 é".chars().collect::<Vec<_>>()), 0..14).prop_map(|v| v.into_iter().collect::<String>()), port in proptest::sample::select(vec!["", "0", "01", "1", "443", "65535", "65536", "99999", "+1"])) {
            for candidate in [s.clone(), format!("{s}:{port}"), format!("*.{s}:{port}")] {
                let schema = re(pattern::EGRESS_TARGET).is_match(&candidate)
                    && (1..=MAX_EGRESS_TARGET).contains(&chars(&candidate));
                prop_assert_eq!(schema, EgressTarget::parse(&candidate).is_ok(), "{:?}", candidate);
            }
        }

        #[test]
        fn no_nul_and_no_control(s in text(12)) {
            prop_assert_eq!(re(pattern::NO_NUL).is_match(&s), !s.contains('\0'));
            prop_assert_eq!(re(pattern::NO_CONTROL).is_match(&s), !s.chars().any(char::is_control));
        }
    }

    #[test]
    fn base64_with_set_unused_bits_is_refused_by_both() {
        use base64::Engine as _;
        for s in ["QR==", "QUJ=", "QQ==", "QUI="] {
            assert_eq!(
                re(pattern::BASE64).is_match(s),
                base64::engine::general_purpose::STANDARD.decode(s).is_ok(),
                "{s}"
            );
        }
    }

    #[test]
    fn reserved_env_names_and_paths() {
        assert!(re(pattern::RESERVED_ENV_NAME).is_match("GLASSBOX_X"));
        for p in ["out", "out/x", "main", "main.py"] {
            assert!(re(pattern::RESERVED_INPUT_PATH).is_match(p), "{p}");
            assert!(WorkspacePath::parse_input(p).is_err(), "{p}");
        }
        for p in ["outx", "a/out", "mainx", "a/main.py"] {
            assert!(!re(pattern::RESERVED_INPUT_PATH).is_match(p), "{p}");
            assert!(WorkspacePath::parse_input(p).is_ok(), "{p}");
        }
    }
}

/// `POST /v1/sessions/{id}/ports` body (and MCP's `expose_port`): a port on
/// the session's loopback that callers may reach through the control plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExposeRequest {
    /// Where the session's program listens (on its own 127.0.0.1).
    #[schemars(range(min = 1, max = 65535), example = 8000)]
    pub port: u16,
    /// Callers with any of these roles may reach it (with `subjects` and
    /// `apps`: any of them; all three empty: any caller of the tenant).
    #[serde(default)]
    #[schemars(length(max = 32), inner(length(min = 1, max = 64), regex(pattern = pattern::NAME)))]
    pub roles: Vec<String>,
    /// Callers with one of these subjects may reach it.
    #[serde(default)]
    #[schemars(length(max = 32), inner(length(min = 1, max = 256), regex(pattern = pattern::NO_CONTROL)))]
    pub subjects: Vec<String>,
    /// Callers acting for one of these apps may reach it.
    #[serde(default)]
    #[schemars(length(max = 32), inner(length(min = 1, max = 256), regex(pattern = pattern::NO_CONTROL)))]
    pub apps: Vec<String>,
}

impl ExposeRequest {
    /// Checks the rules the schema states; a refusal names the member.
    pub fn check(&self) -> Result<(), Invalid> {
        if self.port == 0 {
            return invalid("port", "must be 1 to 65535");
        }
        for (member, list, max, name_rule) in [
            ("roles", &self.roles, 64, true),
            ("subjects", &self.subjects, 256, false),
            ("apps", &self.apps, 256, false),
        ] {
            if list.len() > 32 {
                return invalid(member, "at most 32");
            }
            for (i, v) in list.iter().enumerate() {
                let ok = !v.is_empty()
                    && v.chars().count() <= max
                    && if name_rule {
                        is_name(v, max)
                    } else {
                        !v.chars().any(char::is_control)
                    };
                if !ok {
                    return invalid(format!("{member}[{i}]"), "not allowed here");
                }
            }
        }
        Ok(())
    }
}

/// A destination a job or session asks to reach through the egress proxy:
/// `host:port`, or `*.domain:port` for any name below the domain (the rule
/// [`pattern::EGRESS_TARGET`] states, at most [`MAX_EGRESS_TARGET`]
/// characters). Names are lower-cased and lose a trailing dot; the tenant's
/// `glassbox.egress` decides each at submission and again for every connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EgressTarget {
    /// A name (an IPv4 address is a name of digit labels) or `*.` + a name.
    pub host: String,
    pub port: u16,
}

impl EgressTarget {
    pub fn parse(s: &str) -> Result<EgressTarget, String> {
        let err = || {
            format!(
                "{}: expected host:port or *.domain:port",
                s.chars().take(64).collect::<String>()
            )
        };
        if s.len() > MAX_EGRESS_TARGET {
            return Err(format!("at most {MAX_EGRESS_TARGET} characters"));
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(err)?;
        // Digits only, no leading zero, 1..=65535.
        if port.is_empty() || port.starts_with('0') || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        let port: u16 = port.parse().map_err(|_| err())?;
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        let name = host.strip_prefix("*.").unwrap_or(&host);
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !name.split('.').all(label_ok) {
            return Err(err());
        }
        Ok(EgressTarget { host, port })
    }

    /// Whether a connection to `host:port` is one this target asked for.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        if port != self.port {
            return false;
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        match self.host.strip_prefix("*.") {
            Some(domain) => host.len() > domain.len() + 1 && host.ends_with(&format!(".{domain}")),
            None => host == self.host,
        }
    }
}

impl std::fmt::Display for EgressTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

#[cfg(test)]
mod egress_tests {
    use super::EgressTarget;

    #[test]
    fn egress_targets_are_names_or_wildcards_with_a_port() {
        let t = EgressTarget::parse("API.Example.com:443").expect("target");
        assert_eq!(t.to_string(), "api.example.com:443");
        assert!(t.matches("api.example.com.", 443));
        assert!(!t.matches("api.example.com", 80));
        assert!(!t.matches("x.api.example.com", 443));
        let w = EgressTarget::parse("*.pythonhosted.org:443").expect("wildcard");
        assert!(w.matches("files.pythonhosted.org", 443));
        assert!(!w.matches("pythonhosted.org", 443));
        assert!(!w.matches("evilpythonhosted.org", 443));
        assert!(EgressTarget::parse("10.0.0.1:5432").is_ok());
        assert_eq!(
            EgressTarget::parse("Example.COM.:8443")
                .expect("trailing dot")
                .to_string(),
            "example.com:8443"
        );
        for bad in [
            "example.com",
            "example.com:0",
            "example.com:070",
            "example.com:+80",
            "example.com:70000",
            "*.:443",
            "exa mple.com:443",
            ":443",
            "a..b:443",
            "a..:443",
            "[::1]:443",
            "*.*.a:443",
        ] {
            assert!(EgressTarget::parse(bad).is_err(), "{bad}");
        }
    }
}
