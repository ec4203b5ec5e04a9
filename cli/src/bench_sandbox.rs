//! `glassbox bench sandbox`: hello-world latency through the sandbox core on the
//! runtimes' images, next to the same core on the old host-`/usr` template, raw
//! `runsc run` of an equivalent bundle and a native process, all in one run; and
//! the images' sizes.

use crate::bench::{percentile, round};
use clap::Args;
use glassbox_sandbox_runner::local::oci;
use glassbox_sandbox_runner::{
    CancellationToken, ExecutionSpec, LocalConfig, LocalRunsc, Roots, RuntimeRegistry,
    SandboxBackend,
};
use serde_json::{Map, json};
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub struct SandboxBench {
    /// Sequential runs per measurement.
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// Base directory for the benchmark's sandboxes.
    #[arg(long, default_value = "/run/glassbox-bench")]
    pub base_dir: PathBuf,
}

const HELLO: [(&str, &str); 3] = [
    ("python", "print('hello')"),
    ("node", "console.log('hello')"),
    ("bash", "echo hello"),
];

fn stats(mut v: Vec<Duration>) -> serde_json::Value {
    v.sort();
    json!({"p50_ms": round(percentile(&v, 0.5)), "p95_ms": round(percentile(&v, 0.95))})
}

/// A bundle equivalent to what `backend` builds for `code` (same root, same
/// runtime), for timing raw `runsc run` against it.
pub(crate) fn raw_bundle(
    backend: &LocalRunsc,
    base_dir: &std::path::Path,
    lang: &str,
    code: &str,
) -> anyhow::Result<PathBuf> {
    let registry = RuntimeRegistry::builtin();
    let rt = registry.get(lang)?;
    let bundle = base_dir.join("raw-bundle").join(lang);
    let ws = bundle.join("ws");
    std::fs::create_dir_all(&ws)?;
    std::fs::write(ws.join(&rt.file_name), code)?;
    std::os::unix::fs::chown(&ws, Some(oci::SANDBOX_UID), Some(oci::SANDBOX_UID))?;
    let mut config = oci::config(
        &ExecutionSpec::new(lang, code),
        rt,
        backend.root(lang)?,
        &ws,
        "/glassbox/bench-raw",
    );
    // Raw runsc manages its own cgroups.
    if let Some(linux) = config.get_mut("linux").and_then(|l| l.as_object_mut()) {
        linux.remove("cgroupsPath");
    }
    std::fs::write(bundle.join("config.json"), serde_json::to_vec(&config)?)?;
    Ok(bundle)
}

/// One raw `runsc run` of `bundle`.
pub(crate) async fn raw_run(
    state: &std::path::Path,
    bundle: &std::path::Path,
    id: &str,
) -> anyhow::Result<std::process::Output> {
    Ok(tokio::process::Command::new("runsc")
        .arg("--root")
        .arg(state)
        .args(["--network=none", "run", "--bundle"])
        .arg(bundle)
        .arg(id)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await?)
}

pub async fn run(args: SandboxBench) -> anyhow::Result<ExitCode> {
    let config = LocalConfig {
        runner_id: "bench".into(),
        base_dir: args.base_dir.clone(),
        ..LocalConfig::default()
    };
    let store = match &config.roots {
        Roots::Images(store) => store.clone(),
        Roots::HostUsrTemplate => anyhow::bail!("the default roots are images"),
    };
    let (backend, _) = LocalRunsc::start(config).await?;
    // The baseline: the same core on the host-/usr template images replace.
    let (host_template, _) = LocalRunsc::start(LocalConfig {
        runner_id: "benchhost".into(),
        base_dir: args.base_dir.clone(),
        roots: Roots::HostUsrTemplate,
        ..LocalConfig::default()
    })
    .await?;
    let registry = RuntimeRegistry::builtin();
    let mut through = Map::new();
    let mut templated = Map::new();
    let mut raw = Map::new();
    let mut native = Map::new();
    let mut ratio = Map::new();
    let mut image_ratio = Map::new();
    let mut sizes = Map::new();
    for lang in registry.names() {
        let (image, recipe) = registry.image_of(&lang)?;
        if let Some(m) = store.lookup(image, recipe)? {
            sizes.insert(
                lang.clone(),
                json!({"image": image, "digest": m.digest, "tar_bytes": m.tar_bytes, "packages": m.packages.len()}),
            );
        }
    }
    for (lang, code) in HELLO {
        // Warm-up, then interleave backend and raw runs so load affects both alike.
        let _ = backend
            .execute(ExecutionSpec::new(lang, code), CancellationToken::new())
            .await?;
        let _ = host_template
            .execute(ExecutionSpec::new(lang, code), CancellationToken::new())
            .await?;
        let rt = registry.get(lang)?;
        let bundle = raw_bundle(&backend, &args.base_dir, lang, code)?;
        let ws = bundle.join("ws");
        let state = args.base_dir.join("raw-state");
        let (mut ours, mut theirs, mut host) = (Vec::new(), Vec::new(), Vec::new());
        let mut on_template = Vec::new();
        for i in 0..args.runs {
            let t = Instant::now();
            let r = host_template
                .execute(ExecutionSpec::new(lang, code), CancellationToken::new())
                .await?;
            on_template.push(t.elapsed());
            anyhow::ensure!(
                r.stdout.text() == "hello\n",
                "{lang} on the host template printed {:?}",
                r.stdout.text()
            );

            let t = Instant::now();
            let r = backend
                .execute(ExecutionSpec::new(lang, code), CancellationToken::new())
                .await?;
            ours.push(t.elapsed());
            anyhow::ensure!(
                r.stdout.text() == "hello\n",
                "{lang} via backend printed {:?}",
                r.stdout.text()
            );

            let id = format!("bench-raw-{lang}-{i}-{}", std::process::id());
            let t = Instant::now();
            let out = raw_run(&state, &bundle, &id).await?;
            theirs.push(t.elapsed());
            anyhow::ensure!(
                out.stdout == b"hello\n",
                "raw runsc {lang}: {}",
                String::from_utf8_lossy(&out.stderr)
            );

            let mut argv = rt.argv(&[]);
            argv[1] = ws.join(&rt.file_name).display().to_string();
            let t = Instant::now();
            let out = tokio::process::Command::new(&argv[0])
                .args(&argv[1..])
                .stdin(Stdio::null())
                .output()
                .await?;
            host.push(t.elapsed());
            anyhow::ensure!(out.stdout == b"hello\n", "native {lang}");
        }
        let p50 = |v: &Vec<Duration>| {
            let mut v = v.clone();
            v.sort();
            percentile(&v, 0.5)
        };
        ratio.insert(lang.into(), json!(round(p50(&ours) / p50(&theirs))));
        image_ratio.insert(lang.into(), json!(round(p50(&ours) / p50(&on_template))));
        templated.insert(lang.into(), stats(on_template));
        through.insert(lang.into(), stats(ours));
        raw.insert(lang.into(), stats(theirs));
        native.insert(lang.into(), stats(host));
        let _ = std::fs::remove_dir_all(&bundle);
    }

    let mut concurrent = Map::new();
    for n in [10usize, 30] {
        let t = Instant::now();
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let b = backend.clone();
                tokio::spawn(async move {
                    b.execute(
                        ExecutionSpec::new("python", "print('hello')"),
                        CancellationToken::new(),
                    )
                    .await
                })
            })
            .collect();
        let mut ok = 0;
        for task in tasks {
            if task
                .await?
                .map(|r| r.stdout.text() == "hello\n")
                .unwrap_or(false)
            {
                ok += 1;
            }
        }
        concurrent.insert(
            n.to_string(),
            json!({"wall_ms": t.elapsed().as_millis() as u64, "succeeded": ok}),
        );
    }

    // Memory of idle sandboxes: their memory cgroups while they sleep.
    let idle = 5usize;
    let tasks: Vec<_> = (0..idle)
        .map(|_| {
            let b = backend.clone();
            tokio::spawn(async move {
                b.execute(
                    ExecutionSpec::new("bash", "sleep 4"),
                    CancellationToken::new(),
                )
                .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut usage = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup/memory/glassbox") {
        for e in entries.filter_map(Result::ok) {
            if e.file_name().to_string_lossy().starts_with("gb-bench-")
                && let Ok(t) = std::fs::read_to_string(e.path().join("memory.usage_in_bytes"))
                && let Ok(n) = t.trim().parse::<u64>()
            {
                usage.push(n);
            }
        }
    }
    for t in tasks {
        let _ = t.await?;
    }
    usage.sort();
    let idle_mem = usage.get(usage.len() / 2).copied();

    println!(
        "{}",
        json!({
            "bench": "sandbox",
            "runs": args.runs,
            "backend": through,
            "roots": "images",
            "baseline_host_usr_template": templated,
            "start_ratio_images_to_host_template_p50": image_ratio,
            "target_ratio": 1.05,
            "image_sizes": sizes,
            "baseline_raw_runsc": raw,
            "baseline_native": native,
            "ratio_to_raw_runsc_p50": ratio,
            "concurrent_python_hello": concurrent,
            "idle_sandbox_memory_bytes_median": idle_mem,
            "idle_sandboxes_measured": usage.len(),
        })
    );
    Ok(ExitCode::SUCCESS)
}
