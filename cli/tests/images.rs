//! `glassbox images` and `glassbox sandbox exec` on images: adding a runtime from
//! a recipe end to end (a real debootstrap build, a real runsc run), OCI export
//! read back by podman, verification, and refused recipes.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn glassbox(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_glassbox"))
        .args(args)
        .env_remove("GLASSBOX_RUNTIMES_FILE")
        .env_remove("GLASSBOX_IMAGES_DIR")
        .output()
        .expect("run glassbox")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gb-cli-images-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch");
    d
}

fn default_store() -> PathBuf {
    glassbox_images::default_store_dir()
}

/// `glassbox images list --json --store STORE` as name → manifest.
fn list(store: &Path) -> std::collections::BTreeMap<String, Value> {
    let o = glassbox(&[
        "images",
        "list",
        "--json",
        "--store",
        &store.display().to_string(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: Vec<Value> = serde_json::from_slice(&o.stdout).expect("json");
    v.into_iter()
        .map(|m| (m["name"].as_str().expect("name").to_owned(), m))
        .collect()
}

#[test]
fn a_runtime_added_from_a_recipe_is_built_and_runs_end_to_end() {
    let dir = scratch("lua");
    let store = dir.join("store");
    let registry = dir.join("runtimes.toml");
    std::fs::write(
        &registry,
        r#"
[images.lua]
suite = "bookworm"
packages = ["lua5.4"]

[languages.lua]
version = "5.4"
file_name = "main.lua"
command = ["/usr/bin/lua5.4", "{file}"]
image = "lua"
"#,
    )
    .expect("registry");
    let (s, r) = (store.display().to_string(), registry.display().to_string());
    // Downloads are shared with the default store's cache; the build is real.
    let build = || {
        Command::new(env!("CARGO_BIN_EXE_glassbox"))
            .args(["images", "build", "--runtimes", &r, "--store", &s])
            .env("GLASSBOX_DEB_CACHE", default_store().join("cache/debs"))
            .output()
            .expect("build")
    };
    let o = build();
    let err = text(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("[1/1] lua: building from recipe sha256:"),
        "{err}"
    );
    assert!(err.contains("lua: built sha256:"), "{err}");
    let images = list(&store);
    let lua = &images["lua"];
    let digest = lua["digest"].as_str().expect("digest").to_owned();
    assert!(
        lua["packages"]
            .as_array()
            .expect("packages")
            .iter()
            .any(|p| p.as_str().is_some_and(|p| p.starts_with("lua5.4="))),
        "{lua}"
    );
    // Unchanged recipe: not rebuilt.
    let o = build();
    assert!(
        text(&o.stderr).contains(&format!("lua: up to date {digest}")),
        "{}",
        text(&o.stderr)
    );

    // The new language runs on its image.
    let code = dir.join("main.lua");
    std::fs::write(
        &code,
        "print(_VERSION)\nprint(io.open('/usr/bin/python3') == nil)\n",
    )
    .expect("code");
    let o = glassbox(&[
        "sandbox",
        "exec",
        "--lang",
        "lua",
        "--runtimes",
        &r,
        "--images",
        &s,
        "--base-dir",
        "/run/glassbox-test",
        "--runner-id",
        "clilua",
        &code.display().to_string(),
    ]);
    let result: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|_| panic!("{} {}", text(&o.stdout), text(&o.stderr)));
    assert!(o.status.success(), "{result}");
    assert_eq!(result["stdout"]["text"], "Lua 5.4\ntrue\n", "{result}");
    assert_eq!(result["runtime"], "lua-5.4");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unknown_and_hostile_recipes_are_refused_before_anything_is_built() {
    let dir = scratch("refused");
    let store = dir.join("store");
    let s = store.display().to_string();
    let o = glassbox(&["images", "build", "--store", &s, "cobol"]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("no recipe for image \"cobol\""),
        "{}",
        text(&o.stderr)
    );
    let recipes = dir.join("bad.toml");
    std::fs::write(
        &recipes,
        "[images.x]\nsuite = \"bookworm\"\npackages = [\"bash;touch /tmp/pwned\"]\n",
    )
    .expect("recipes");
    let o = glassbox(&[
        "images",
        "build",
        "--store",
        &s,
        "--recipes",
        &recipes.display().to_string(),
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("is not a Debian package name"),
        "{}",
        text(&o.stderr)
    );
    assert!(
        !store.exists(),
        "nothing may be created for a refused recipe"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_exported_oci_image_is_read_by_podman_with_the_image_digest_as_its_layer() {
    let dir = scratch("oci");
    let images = list(&default_store());
    let bash = images
        .get("bash")
        .expect("bash image built (glassbox images build)");
    let digest = bash["digest"].as_str().expect("digest");

    // The tar export is the canonical tar: its SHA-256 is the image digest.
    let tar = dir.join("bash.tar");
    let o = glassbox(&[
        "images",
        "export",
        "bash",
        "--tar",
        &tar.display().to_string(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let bytes = std::fs::read(&tar).expect("tar");
    let sum = ring::digest::digest(&ring::digest::SHA256, &bytes);
    assert_eq!(format!("sha256:{}", hex::encode(sum.as_ref())), digest);
    std::fs::remove_file(&tar).expect("rm");

    let layout = dir.join("oci");
    let tag = format!("gbtest{}", std::process::id());
    let o = glassbox(&[
        "images",
        "export",
        "bash",
        "--oci",
        &layout.display().to_string(),
        "--tag",
        &tag,
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = Command::new("podman")
        .args(["pull", "--quiet"])
        .arg(format!("oci:{}:{tag}", layout.display()))
        .output()
        .expect("podman (test.sh installs it)");
    assert!(o.status.success(), "podman pull: {}", text(&o.stderr));
    let id = text(&o.stdout).trim().to_owned();
    let o = Command::new("podman")
        .args([
            "image",
            "inspect",
            "--format",
            "{{json .RootFS.Layers}} {{.Config.User}} {{.Config.WorkingDir}}",
            &id,
        ])
        .output()
        .expect("inspect");
    let _ = Command::new("podman")
        .args(["rmi", "--force", &id])
        .output();
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(
        text(&o.stdout).trim(),
        format!("[\"{digest}\"] 65534:65534 /workspace")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn images_verify_fails_on_an_altered_copy_and_names_it() {
    let dir = scratch("verify");
    let src = default_store();
    let bash = list(&src).get("bash").cloned().expect("bash image built");
    let hex = bash["digest"]
        .as_str()
        .expect("digest")
        .trim_start_matches("sha256:")
        .to_owned();
    std::fs::create_dir_all(dir.join("sha256")).expect("mkdir");
    for (from, to) in [
        (src.join("sha256").join(&hex), dir.join("sha256")),
        (src.join("names"), dir.clone()),
        (src.join("recipes"), dir.clone()),
    ] {
        assert!(
            Command::new("cp")
                .arg("-a")
                .arg(from)
                .arg(to)
                .status()
                .expect("cp")
                .success()
        );
    }
    let s = dir.display().to_string();
    let o = glassbox(&["images", "verify", "--store", &s, "bash"]);
    assert!(o.status.success(), "{}", text(&o.stdout));
    assert_eq!(text(&o.stdout).trim(), format!("bash: ok sha256:{hex}"));
    // A new file appears in the tree.
    std::fs::write(
        dir.join("sha256").join(&hex).join("rootfs/usr/bin/implant"),
        b"x",
    )
    .expect("implant");
    let o = glassbox(&["images", "verify", "--store", &s, "bash"]);
    assert!(!o.status.success());
    let out = text(&o.stdout);
    assert!(
        out.starts_with("bash: FAILED: image bash: altered"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `glassbox dev` on a store without the runtime's image builds it on its first
/// start, showing progress, then runs programs on it; the next start reuses it.
#[tokio::test]
async fn dev_builds_missing_runtime_images_on_first_start_and_runs_on_them() {
    let dir = scratch("dev");
    let store = dir.join("store");
    let registry = dir.join("runtimes.toml");
    // The built-in bash runtime alone (its recipe is the built-in one).
    std::fs::write(
        &registry,
        "[images.bash]\nsuite = \"bookworm\"\npackages = [\"bash\"]\n\n[languages.bash]\nversion = \"5.2\"\nfile_name = \"main.sh\"\ncommand = [\"/usr/bin/bash\", \"{file}\"]\nimage = \"bash\"\n",
    )
    .expect("registry");
    let db = glassbox_events::testing::TestDb::new()
        .await
        .expect("database");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let env = |c: &mut Command| {
        c.env_remove("GLASSBOX_LEDGER_KEY_FILE")
            .env("DATABASE_URL", &db.url)
            .env("GLASSBOX_DATA_DIR", &dir)
            .env("GLASSBOX_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env(
                "GLASSBOX_RUNNER_ID",
                format!("devimg{}", std::process::id()),
            )
            .env("GLASSBOX_SANDBOX_DIR", "/run/glassbox-test")
            .env("GLASSBOX_RUNTIMES_FILE", &registry)
            .env("GLASSBOX_IMAGES_DIR", &store)
            .env("GLASSBOX_DEB_CACHE", default_store().join("cache/debs"));
    };
    let start = |log: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_glassbox"));
        env(&mut c);
        let child = c
            .args(["dev", "--no-checkpoints"])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join(log)).expect("log"))
            .spawn()
            .expect("glassbox dev");
        // Up when it says so (the port opens before the runner's images are ready).
        let started = std::time::Instant::now();
        while !std::fs::read_to_string(dir.join(log))
            .unwrap_or_default()
            .contains("glassbox dev: API on")
        {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(300),
                "glassbox dev did not come up: {}",
                std::fs::read_to_string(dir.join(log)).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        child
    };
    let stop = |mut child: std::process::Child| {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let status = child.wait().expect("wait");
        assert!(status.success(), "{status:?}");
    };

    let dev = start("dev1.log");
    let log = std::fs::read_to_string(dir.join("dev1.log")).unwrap_or_default();
    assert!(
        log.contains("glassbox dev: building runtime images bash"),
        "{log}"
    );
    assert!(
        log.contains("[1/1] bash: building from recipe sha256:"),
        "{log}"
    );
    assert!(log.contains("[1/1] bash: built sha256:"), "{log}");
    let digest = list(&store)["bash"]["digest"]
        .as_str()
        .expect("digest")
        .to_owned();
    // The runner uses it: a program runs.
    let f = dir.join("ok.sh");
    std::fs::write(&f, "echo \"fine $BASH_VERSION\"\n").expect("program");
    let mut c = Command::new(env!("CARGO_BIN_EXE_glassbox"));
    env(&mut c);
    let o = c
        .args(["run", "--api", &format!("http://127.0.0.1:{port}")])
        .arg(&f)
        .output()
        .expect("glassbox run");
    assert!(o.status.success(), "{}{}", text(&o.stdout), text(&o.stderr));
    assert!(
        text(&o.stdout).starts_with("fine 5.2"),
        "{}",
        text(&o.stdout)
    );
    stop(dev);

    // Second start: nothing to build.
    let dev = start("dev2.log");
    let log = std::fs::read_to_string(dir.join("dev2.log")).unwrap_or_default();
    assert!(!log.contains("building"), "{log}");
    stop(dev);
    assert_eq!(
        list(&store)["bash"]["digest"].as_str(),
        Some(digest.as_str())
    );
    let _ = std::fs::remove_dir_all(&dir);
}
