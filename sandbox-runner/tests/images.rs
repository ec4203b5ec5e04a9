//! Sandboxes run on their runtime's image, never on the host's `/usr`: what a
//! program sees, which interpreter it gets, what is recorded, and what happens
//! when an image is missing or altered — under real runsc.

mod common;

use common::{BASE, backend, run, runner_id, spec};
use glassbox_events::catalogue::Outcome;
use glassbox_images::{ImageError, ImageStore};
use glassbox_sandbox_runner::backend::Progress;
use glassbox_sandbox_runner::{
    CancellationToken, LocalConfig, LocalRunsc, Roots, RuntimeRegistry, SandboxBackend,
    SandboxError,
};
use std::path::{Path, PathBuf};

fn store() -> ImageStore {
    ImageStore::open(glassbox_images::default_store_dir())
}

/// The manifest of `language`'s image in the default store.
fn manifest(language: &str) -> glassbox_images::Manifest {
    let registry = RuntimeRegistry::builtin();
    let (image, recipe) = registry.image_of(language).expect("image");
    store()
        .lookup(image, recipe)
        .expect("store")
        .unwrap_or_else(|| panic!("image {image} not built (glassbox images build)"))
}

/// `3.11.2-6+deb12u6` → `3.11.2`; `1:2.3-4` → `2.3`.
fn upstream(version: &str) -> &str {
    let v = version.split_once(':').map_or(version, |(_, v)| v);
    v.split(['-', '+', '~']).next().unwrap_or(v)
}

#[tokio::test]
async fn sandboxes_see_their_image_not_the_hosts_usr_and_its_interpreter_versions() {
    // What the host has that the images do not: if the host lacked them, the
    // test would prove nothing.
    let host_local: Vec<_> = std::fs::read_dir("/usr/local/bin")
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    let host_only = [
        "/usr/bin/runsc",
        "/usr/bin/psql",
        "/usr/bin/redis-server",
        "/usr/sbin/debootstrap",
    ];
    for p in host_only {
        assert!(Path::new(p).exists(), "host precondition: {p}");
    }
    let b = backend().await;
    let code = format!(
        r#"
import json, os, sys
print(json.dumps({{
    "usr_local": sorted(os.listdir("/usr/local/bin")) if os.path.isdir("/usr/local/bin") else [],
    "present": [p for p in {host_only:?} if os.path.exists(p)],
    "node": os.path.exists("/usr/bin/node"),
    "version": sys.version.split()[0],
    "os": open("/etc/os-release").read().splitlines()[0],
}}))
"#
    );
    let r = run(&b, spec("python", &code)).await;
    assert_eq!(r.outcome, Outcome::Succeeded, "{}", r.stderr.text());
    let seen: serde_json::Value = serde_json::from_str(r.stdout.text().trim()).expect("json");
    assert_eq!(
        seen["usr_local"],
        serde_json::json!([]),
        "host /usr/local/bin {host_local:?} leaked: {seen}"
    );
    assert_eq!(
        seen["present"],
        serde_json::json!([]),
        "host-only packages visible: {seen}"
    );
    assert_eq!(
        seen["node"], false,
        "node is not in the python image: {seen}"
    );
    let py = manifest("python");
    let want = upstream(
        py.package_version("python3.11")
            .expect("python3.11 in the image"),
    );
    assert_eq!(seen["version"], want, "{seen}");
    assert_eq!(seen["os"], "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"");

    let r = run(&b, spec("node", "console.log(process.version)")).await;
    assert_eq!(r.outcome, Outcome::Succeeded, "{}", r.stderr.text());
    let node = manifest("node");
    let want = upstream(node.package_version("nodejs").expect("nodejs in the image"));
    assert_eq!(r.stdout.text().trim(), format!("v{want}"));
    assert_eq!(r.stderr.text(), "", "node starts cleanly on its image");

    let r = run(
        &b,
        spec(
            "bash",
            "echo \"$BASH_VERSION\"; if [ -e /usr/bin/python3 ]; then echo python; fi",
        ),
    )
    .await;
    assert_eq!(r.outcome, Outcome::Succeeded, "{}", r.stderr.text());
    let bash = manifest("bash");
    let want = upstream(bash.package_version("bash").expect("bash in the image"));
    assert!(
        r.stdout.text().starts_with(&format!("{want}(")),
        "{} vs {want}",
        r.stdout.text()
    );
    assert!(
        !r.stdout.text().contains("python"),
        "python is not in the bash image"
    );
}

#[tokio::test]
async fn provisioning_reports_the_digest_of_the_image_it_used() {
    let b = backend().await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let r = b
        .execute_observed(
            spec("python", "print(1)"),
            CancellationToken::new(),
            Some(tx),
        )
        .await
        .expect("execution");
    assert_eq!(r.outcome, Outcome::Succeeded);
    let mut digest = None;
    while let Ok(p) = rx.try_recv() {
        if let Progress::Provisioned { image_digest, .. } = p {
            digest = image_digest;
        }
    }
    assert_eq!(digest.as_deref(), Some(manifest("python").digest.as_str()));
    assert_eq!(
        b.root("python").expect("root").image_digest.as_deref(),
        digest.as_deref()
    );
}

/// A store holding only a copy of the python image, and a registry of python only.
fn copied_store(dir: &Path) -> (ImageStore, RuntimeRegistry) {
    let registry = RuntimeRegistry::builtin();
    let (image, recipe) = registry.image_of("python").expect("python");
    let m = manifest("python");
    let src = store();
    let copy = ImageStore::open(dir);
    std::fs::create_dir_all(dir.join("sha256")).expect("mkdir");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(src.image_dir(&m.digest))
        .arg(dir.join("sha256"))
        .status()
        .expect("cp");
    assert!(status.success());
    for sub in ["recipes", "names"] {
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(src.dir().join(sub))
            .arg(dir)
            .status()
            .expect("cp");
        assert!(status.success());
    }
    let text = format!(
        "[images.{image}]\n{}\n[languages.python]\nversion = \"3.11\"\nfile_name = \"main.py\"\ncommand = [\"/usr/bin/python3\", \"{{file}}\"]\nimage = \"{image}\"\n",
        toml::to_string(recipe).expect("toml")
    );
    let registry = RuntimeRegistry::parse(&text, Path::new("python-only.toml")).expect("registry");
    (copy, registry)
}

async fn start(store: &ImageStore, registry: &RuntimeRegistry) -> Result<LocalRunsc, SandboxError> {
    LocalRunsc::start(LocalConfig {
        runner_id: runner_id(),
        base_dir: PathBuf::from(BASE),
        registry: registry.clone(),
        roots: Roots::Images(store.clone()),
        ..LocalConfig::default()
    })
    .await
    .map(|(b, _)| b)
}

#[tokio::test]
async fn a_changed_byte_in_an_image_stops_start_up_naming_the_image() {
    let dir = std::env::temp_dir().join(format!("gb-images-altered-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (copy, registry) = copied_store(&dir);
    let b = start(&copy, &registry)
        .await
        .expect("an intact copy starts");
    let r = run(&b, spec("python", "print('intact')")).await;
    assert_eq!(r.stdout.text(), "intact\n");
    drop(b);

    // One byte of the standard library changes.
    let m = manifest("python");
    let victim = copy.rootfs(&m.digest).join("usr/lib/python3.11/os.py");
    let mut bytes = std::fs::read(&victim).expect("os.py");
    bytes[100] ^= 0x01;
    std::fs::write(&victim, &bytes).expect("alter");
    let e = start(&copy, &registry)
        .await
        .expect_err("an altered image must not start");
    match &e {
        SandboxError::Image {
            source:
                ImageError::Altered {
                    image,
                    expected,
                    actual,
                },
            ..
        } => {
            assert_eq!(image, "python");
            assert_eq!(expected, m.digest.as_str());
            assert_ne!(actual, expected);
        }
        other => panic!("expected an altered-image error, got {other:?}"),
    }
    let text = e.to_string();
    assert!(
        text.contains("image python") && text.contains("altered"),
        "{text}"
    );

    // Restored, it starts again: the check compares content, not times.
    bytes[100] ^= 0x01;
    std::fs::write(&victim, &bytes).expect("restore");
    start(&copy, &registry).await.expect("restored");

    // A mode bit is content too.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    assert!(matches!(
        start(&copy, &registry).await,
        Err(SandboxError::Image {
            source: ImageError::Altered { .. },
            ..
        })
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_missing_image_stops_start_up_and_never_falls_back_to_the_host() {
    let dir = std::env::temp_dir().join(format!("gb-images-missing-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let registry = RuntimeRegistry::builtin();
    let e = start(&ImageStore::open(&dir), &registry)
        .await
        .expect_err("no images, no runner");
    assert!(
        matches!(
            &e,
            SandboxError::Image {
                source: ImageError::NotBuilt { .. },
                ..
            }
        ),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(
        text.contains("not built") && text.contains("glassbox images build"),
        "{text}"
    );

    // The tree gone but the build recorded: also refused, naming the image.
    let (copy, python_only) = copied_store(&dir.join("copy"));
    std::fs::remove_dir_all(copy.rootfs(&manifest("python").digest)).expect("rm");
    let e = start(&copy, &python_only).await.expect_err("tree missing");
    assert!(e.to_string().contains("image python"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
