//! The plane images: docker/build.sh builds both with podman (bases from
//! `glassbox images build`), and the control plane, started from its image's
//! filesystem the way a container runtime would start it (the image's user,
//! environment, entrypoint and command), answers `/readyz` against the test
//! database. `podman run` does not work on this host's cgroups, so the image's
//! tree is exported and run under `chroot` in a fresh mount namespace (with its
//! own `/proc`).

use glassbox_events::testing::TestDb;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CLI: &str = env!("CARGO_BIN_EXE_glassbox-e2e-cli");

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn podman(args: &[&str]) -> std::process::Output {
    Command::new("podman")
        .args(args)
        .output()
        .expect("podman (scripts/test.sh installs it)")
}

fn inspect(image: &str) -> Value {
    let o = podman(&["image", "inspect", image]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: Vec<Value> = serde_json::from_slice(&o.stdout).expect("json");
    v.into_iter().next().expect("one image")
}

/// The image's tree, exported into `dir`.
fn export(image: &str, dir: &Path) {
    let o = podman(&["create", "--pull=never", "--no-healthcheck", image]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let cid = text(&o.stdout).trim().to_owned();
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "podman export {cid} | tar -x --numeric-owner -C '{}'",
            dir.display()
        ))
        .status()
        .expect("export");
    let _ = podman(&["rm", "--force", &cid]);
    assert!(st.success());
}

#[tokio::test]
async fn both_plane_images_build_and_the_control_plane_answers_readyz_from_its_image() {
    glassbox_platform::install_crypto_provider();
    let tag = format!("ci{}", std::process::id());
    let agent = PathBuf::from(CLI)
        .parent()
        .map(|d| d.join("glassbox-session-agent"))
        .filter(|p| p.is_file())
        .or_else(|| glassbox_sandbox_runner::local::session::find_agent().ok())
        .expect("glassbox-session-agent is built");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let o = Command::new("bash")
        .arg(root.join("docker/build.sh"))
        .args(["--glassbox", CLI, "--cli", CLI, "--tag", &tag])
        .arg("--agent")
        .arg(&agent)
        .output()
        .expect("docker/build.sh");
    assert!(o.status.success(), "build.sh: {}", text(&o.stderr));
    let control = format!("localhost/glassbox-control-plane:{tag}");
    let data = format!("localhost/glassbox-data-plane:{tag}");

    // Removed however the test ends (the bases stay: they are the build cache).
    struct Images(String, String);
    impl Drop for Images {
        fn drop(&mut self) {
            let _ = podman(&["rmi", "--force", &self.0, &self.1]);
        }
    }
    let _images = Images(control.clone(), data.clone());
    let c = inspect(&control);
    let d = inspect(&data);
    assert_eq!(
        c["Config"]["User"], "65532:65532",
        "control plane runs as non-root"
    );
    assert_eq!(
        c["Config"]["Entrypoint"],
        serde_json::json!(["/usr/local/bin/glassbox"])
    );
    assert_eq!(c["Config"]["Cmd"], serde_json::json!(["serve"]));
    assert_eq!(d["Config"]["Cmd"], serde_json::json!(["runner"]));
    for img in [&c, &d] {
        let hc = img["Healthcheck"]["Test"]
            .as_array()
            .unwrap_or_else(|| panic!("HEALTHCHECK kept: {}", img["Healthcheck"]));
        assert_eq!(hc[1], "/usr/local/bin/glassbox");
        assert_eq!(hc[2], "healthcheck");
    }

    let tmp = std::env::temp_dir().join(format!("gb-plane-{tag}"));
    let (cfs, dfs) = (tmp.join("control"), tmp.join("data"));
    std::fs::create_dir_all(&cfs).expect("dir");
    std::fs::create_dir_all(&dfs).expect("dir");
    export(&control, &cfs);
    export(&data, &dfs);
    // The control plane has no runsc; the data plane has runsc and the agent.
    assert!(cfs.join("usr/local/bin/glassbox").is_file());
    assert!(
        !cfs.join("usr/bin/runsc").exists(),
        "no runsc in the control plane"
    );
    assert!(dfs.join("usr/bin/runsc").is_file());
    assert!(dfs.join("usr/local/bin/glassbox-session-agent").is_file());

    // The data plane's binaries run on its own libraries.
    for argv in [
        vec!["/usr/local/bin/glassbox", "--version"],
        vec!["/usr/bin/runsc", "--version"],
    ] {
        let o = Command::new("unshare")
            .arg("--mount")
            .arg(format!("--mount-proc={}", dfs.join("proc").display()))
            .arg("chroot")
            .arg(&dfs)
            .args(["/usr/bin/env", "-i", "PATH=/usr/local/bin:/usr/bin:/bin"])
            .args(&argv)
            .output()
            .expect("data plane binary");
        assert!(o.status.success(), "{argv:?}: {}", text(&o.stderr));
    }

    // Start the control plane as the image says: its user, env, workdir,
    // entrypoint and command; only the database and the listening address
    // (a free loopback port instead of 0.0.0.0:8080) come from the test.
    let db = TestDb::new().await.expect("database");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let mut env: Vec<String> = c["Config"]["Env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|v| v.as_str())
        .filter(|v| !v.starts_with("GLASSBOX_HTTP_ADDR="))
        .map(str::to_owned)
        .collect();
    env.push(format!("GLASSBOX_HTTP_ADDR=127.0.0.1:{port}"));
    env.push(format!("GLASSBOX_DATABASE_URL={}", db.url));
    env.push("GLASSBOX_ENV=test".into());
    env.push("GLASSBOX_AUTH_HS256_SECRET=plane-image-test-secret-0123456789".into());
    let mut argv: Vec<String> = Vec::new();
    for part in ["Entrypoint", "Cmd"] {
        argv.extend(
            c["Config"][part]
                .as_array()
                .expect("argv")
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned)),
        );
    }
    let workdir = c["Config"]["WorkingDir"]
        .as_str()
        .expect("workdir")
        .to_owned();
    let user = c["Config"]["User"].as_str().expect("user").to_owned();
    // unshare execs chroot, which execs env, which execs the entrypoint: the
    // child's PID is the control plane's, so killing it stops the plane.
    let mut child = Command::new("unshare")
        .arg("--mount")
        .arg(format!("--mount-proc={}", cfs.join("proc").display()))
        .arg("chroot")
        .arg(format!("--userspec={user}"))
        .arg(&cfs)
        .args(["/usr/bin/env", "-i", "--chdir", &workdir])
        .args(&env)
        .args(&argv)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the control plane from its image");
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/readyz");
    let deadline = Instant::now() + Duration::from_secs(60);
    let ready = loop {
        if let Ok(r) = client.get(&url).send().await
            && r.status().is_success()
        {
            break r.json::<Value>().await.ok();
        }
        if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // The image's own HEALTHCHECK command, run inside its tree, agrees.
    let hc = Command::new("chroot")
        .arg(format!("--userspec={user}"))
        .arg(&cfs)
        .args(["/usr/local/bin/glassbox", "healthcheck", &url])
        .status()
        .expect("healthcheck");
    let _ = child.kill();
    let out = child.wait_with_output().expect("wait");
    let _ = std::fs::remove_dir_all(&tmp);
    let ready = ready.unwrap_or_else(|| {
        panic!(
            "the control plane from its image never became ready: {}",
            text(&out.stderr)
        )
    });
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["database"], "ok", "{ready}");
    assert!(hc.success(), "the image's healthcheck command failed");
}
