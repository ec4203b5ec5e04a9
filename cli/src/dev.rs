//! `glassbox dev` (everything in one process on embedded defaults), `glassbox
//! runner` (the runner service alone) and `glassbox run` (submit a file and wait
//! for its output).

use crate::serve::SigningArgs;
use anyhow::Context as _;
use clap::Args;
use glassbox_domain::JobStatus;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The data directory (`GLASSBOX_DATA_DIR`, default `~/.local/share/glassbox`).
pub fn data_dir() -> PathBuf {
    std::env::var_os("GLASSBOX_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("."))
                .join(".local/share/glassbox")
        })
}

/// The development HS256 secret kept in the data directory (created, 0600).
pub fn dev_secret(create: bool) -> anyhow::Result<Option<String>> {
    if let Ok(s) = std::env::var("GLASSBOX_AUTH_HS256_SECRET")
        && !s.is_empty()
    {
        return Ok(Some(s));
    }
    let path = data_dir().join("dev-hs256-secret");
    if let Ok(s) = std::fs::read_to_string(&path) {
        return Ok(Some(s.trim().to_owned()));
    }
    if !create {
        return Ok(None);
    }
    std::fs::create_dir_all(data_dir()).context("creating the data directory")?;
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| anyhow::anyhow!("no randomness for the development secret"))?;
    let secret = hex::encode(bytes);
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(secret.as_bytes())?;
    Ok(Some(secret))
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// A private PostgreSQL cluster from the system's binaries, for `glassbox dev`
/// without a database URL. Returns its URL and the pg_ctl command that stops it.
/// The local Redis `url` names, started (`redis-server`, in memory only) when
/// nothing answers there and it is on this machine. `Some(description)` when
/// it was started; `None` when it was already up. A remote Redis that does not
/// answer is an error.
pub async fn ensure_redis(url: &str) -> anyhow::Result<Option<String>> {
    let rest = url
        .strip_prefix("redis://")
        .with_context(|| format!("{url}: only a redis:// URL can be started locally"))?;
    let hostport = rest.rsplit('@').next().unwrap_or(rest);
    let hostport = hostport.split('/').next().unwrap_or(hostport);
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().context("the Redis port")?),
        None => (hostport, 6379),
    };
    let answers = || async {
        tokio::time::timeout(
            std::time::Duration::from_millis(500),
            tokio::net::TcpStream::connect((host, port)),
        )
        .await
        .is_ok_and(|c| c.is_ok())
    };
    if answers().await {
        return Ok(None);
    }
    anyhow::ensure!(
        matches!(host, "127.0.0.1" | "localhost" | "::1" | "[::1]"),
        "Redis at {host}:{port} does not answer (start it, or point GLASSBOX_REDIS_URL at one)"
    );
    let status = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--daemonize", "yes", "--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .status()
        .context("Redis does not answer and redis-server could not be run (apt-get install redis-server)")?;
    anyhow::ensure!(status.success(), "redis-server failed to start ({status})");
    for _ in 0..50 {
        if answers().await {
            return Ok(Some(format!("redis-server on 127.0.0.1:{port}")));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    anyhow::bail!("redis-server on 127.0.0.1:{port} did not come up within 5 s")
}

async fn private_postgres() -> anyhow::Result<(String, Vec<String>)> {
    let mut bins: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no PostgreSQL binaries in /usr/lib/postgresql (apt-get install postgresql, or set DATABASE_URL)")?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    bins.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    let bin = bins
        .pop()
        .context("no initdb under /usr/lib/postgresql/*/bin")?;
    let root = is_root();
    // The postgres user cannot enter root's home: as root the cluster lives in
    // /var/lib, one per data directory (its blobs' keys are wrapped by that
    // directory's key-encryption key, so the two belong together).
    let dir = if root {
        let tag = hex::encode(
            &ring::digest::digest(
                &ring::digest::SHA256,
                data_dir().to_string_lossy().as_bytes(),
            )
            .as_ref()[..6],
        );
        PathBuf::from(format!("/var/lib/glassbox/postgres-{tag}"))
    } else {
        data_dir().join("postgres")
    };
    let port = std::env::var("GLASSBOX_DEV_PG_PORT").unwrap_or_else(|_| "54329".into());
    let as_pg = |args: Vec<String>| -> std::process::Command {
        if root {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).args(args);
            c
        } else {
            let mut c = std::process::Command::new(&args[0]);
            c.args(&args[1..]);
            c
        }
    };
    let d = dir.to_string_lossy().into_owned();
    if !dir.join("PG_VERSION").exists() {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {d}"))?;
        if root {
            let ok = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres", &d])
                .status()?
                .success();
            anyhow::ensure!(ok, "chown postgres {d} failed");
        }
        eprintln!("glassbox dev: creating a private PostgreSQL cluster in {d}");
        let out = as_pg(vec![
            bin.join("initdb").to_string_lossy().into_owned(),
            "-D".into(),
            d.clone(),
            "-U".into(),
            "postgres".into(),
            "-A".into(),
            "trust".into(),
            "--no-sync".into(),
        ])
        .output()
        .context("running initdb")?;
        anyhow::ensure!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let pg_ctl = bin.join("pg_ctl").to_string_lossy().into_owned();
    let running = as_pg(vec![
        pg_ctl.clone(),
        "status".into(),
        "-D".into(),
        d.clone(),
    ])
    .output()
    .map(|o| o.status.success())
    .unwrap_or(false);
    if !running {
        let out = as_pg(vec![
            pg_ctl.clone(),
            "-D".into(),
            d.clone(),
            "-l".into(),
            format!("{d}/server.log"),
            "-o".into(),
            format!("-p {port} -c listen_addresses=127.0.0.1 -k {d}"),
            "-w".into(),
            "start".into(),
        ])
        .output()
        .context("starting PostgreSQL")?;
        anyhow::ensure!(
            out.status.success(),
            "pg_ctl start failed (see {d}/server.log): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let admin = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
        .await
        .context("connecting to the private PostgreSQL")?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'glassbox')")
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        sqlx::query("CREATE DATABASE glassbox")
            .execute(&mut conn)
            .await?;
    }
    let stop = if root {
        vec![
            "runuser".into(),
            "-u".into(),
            "postgres".into(),
            "--".into(),
            pg_ctl,
            "-D".into(),
            d,
            "-m".into(),
            "fast".into(),
            "stop".into(),
        ]
    } else {
        vec![
            pg_ctl,
            "-D".into(),
            d,
            "-m".into(),
            "fast".into(),
            "stop".into(),
        ]
    };
    Ok((
        format!("postgres://postgres@127.0.0.1:{port}/glassbox"),
        stop,
    ))
}

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Run without a runner (jobs stay accepted).
    #[arg(long)]
    pub no_runner: bool,
    #[command(flatten)]
    pub signing: SigningArgs,
}

/// `glassbox dev`: command API, projector (signing checkpoints) and a runner in
/// one process, on embedded defaults.
pub async fn dev(args: DevArgs) -> anyhow::Result<ExitCode> {
    let mut vars: BTreeMap<String, String> = std::env::vars().collect();
    vars.entry("GLASSBOX_ENV".into())
        .or_insert_with(|| "development".into());
    vars.insert(
        "GLASSBOX_DATA_DIR".into(),
        data_dir().to_string_lossy().into_owned(),
    );
    if let Some(s) = dev_secret(true)? {
        vars.entry("GLASSBOX_AUTH_HS256_SECRET".into()).or_insert(s);
    }
    let mut stop_pg = None;
    let has_db = ["GLASSBOX_DATABASE_URL", "DATABASE_URL"]
        .iter()
        .any(|k| vars.get(*k).is_some_and(|v| !v.is_empty()));
    if !has_db {
        let (url, stop) = private_postgres().await?;
        vars.insert("GLASSBOX_DATABASE_URL".into(), url);
        stop_pg = Some(stop);
    }
    if !args.signing.no_checkpoints {
        // The API serves the verifier key and verifies with it.
        vars.entry("GLASSBOX_LEDGER_KEY_FILE".into())
            .or_insert_with(|| args.signing.key_file.to_string_lossy().into_owned());
    }
    let config = glassbox_platform::Config::from_vars(vars.clone()).context("configuration")?;
    if let Some(started) = ensure_redis(&config.redis_url).await? {
        eprintln!("glassbox dev: started {started}");
    }
    let token = CancellationToken::new();
    tokio::spawn(crate::serve::shutdown_signal(token.clone()));
    let result = dev_inner(&args, &config, &vars, token).await;
    if let Some(stop) = stop_pg {
        let _ = std::process::Command::new(&stop[0])
            .args(&stop[1..])
            .output();
    }
    result
}

async fn dev_inner(
    args: &DevArgs,
    config: &glassbox_platform::Config,
    vars: &BTreeMap<String, String>,
    token: CancellationToken,
) -> anyhow::Result<ExitCode> {
    // The key first (created if missing): the API loads its verifier key.
    let publisher = args.signing.publisher()?;
    let app = glassbox_command_api::Application::build(config.clone()).await?;
    let app_token = app.shutdown_token();
    let store = app.state().core.store.clone();
    let projector =
        tokio::spawn(glassbox_projector::Projector::new(store).run(publisher, token.clone()));
    let runner = if args.no_runner {
        None
    } else {
        let settings = glassbox_sandbox_runner::service::RunnerSettings::from_vars(vars)
            .context("runner configuration")?;
        // First start: build the runtime images the runner will verify and use.
        if let glassbox_sandbox_runner::Roots::Images(store) = &settings.local.roots {
            crate::images::ensure_runtime_images(store.clone(), settings.local.registry.clone())
                .await
                .context("building the runtime images")?;
        }
        let (c, t) = (config.clone(), token.clone());
        Some(tokio::spawn(async move {
            glassbox_sandbox_runner::service::run_service(&c, settings, t).await
        }))
    };
    eprintln!(
        "glassbox dev: API on http://{}:{} ({} environment){}\n  try: glassbox run hello.py   (token: glassbox token)",
        config.http_addr.ip(),
        app.port(),
        config.environment.as_str(),
        if args.no_runner {
            ", no runner"
        } else {
            ", runner on runsc"
        },
    );
    let t = token.clone();
    tokio::spawn(async move {
        t.cancelled().await;
        app_token.cancel();
    });
    app.run_until_stopped().await.context("serving HTTP")?;
    token.cancel();
    let _ = projector.await;
    if let Some(r) = runner {
        match r.await {
            Ok(Err(e)) => return Err(e.into()),
            Err(e) => return Err(e.into()),
            Ok(Ok(())) => {}
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `glassbox runner`: the runner service on its own.
pub async fn runner() -> anyhow::Result<ExitCode> {
    let config = glassbox_platform::Config::from_env().context("configuration")?;
    let vars: BTreeMap<String, String> = std::env::vars().collect();
    let settings = glassbox_sandbox_runner::service::RunnerSettings::from_vars(&vars)
        .context("runner configuration")?;
    let token = CancellationToken::new();
    tokio::spawn(crate::serve::shutdown_signal(token.clone()));
    glassbox_sandbox_runner::service::run_service(&config, settings, token).await?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The program to run.
    pub file: PathBuf,
    /// Language (default: from the file extension: .py python, .js node, .sh bash).
    #[arg(long)]
    pub lang: Option<String>,
    /// A file to pass as stdin (`-` for this process's stdin).
    #[arg(long)]
    pub stdin: Option<PathBuf>,
    /// Submit and print the receipt without waiting.
    #[arg(long)]
    pub no_wait: bool,
    /// Kept for symmetry: waiting is the default.
    #[arg(long, conflicts_with = "no_wait")]
    pub wait: bool,
    /// Print one JSON object instead of the program's output.
    #[arg(long)]
    pub json: bool,
    /// The API (default: GLASSBOX_API_URL or http://GLASSBOX_HTTP_ADDR).
    #[arg(long, env = "GLASSBOX_API_URL")]
    pub api: Option<String>,
    /// A bearer token (default: a development token minted locally).
    #[arg(long, env = "GLASSBOX_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Tenant of the minted development token.
    #[arg(long, default_value = "default")]
    pub tenant: String,
    /// Idempotency key (retrying with the same key never runs the job twice).
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// A destination the program may reach through its egress proxy
    /// (`host:port`, `*.domain:port`; repeat for more). None: no network.
    #[arg(long = "egress", value_name = "DEST")]
    pub egress: Vec<String>,
    /// Arguments for the program.
    #[arg(last = true)]
    pub args: Vec<String>,
}

fn language_of(path: &Path) -> Option<&'static str> {
    match path.extension()?.to_str()? {
        "py" => Some("python"),
        "js" | "mjs" | "cjs" => Some("node"),
        "sh" | "bash" => Some("bash"),
        _ => None,
    }
}

fn show_stream(v: &Value) -> Vec<u8> {
    let content = v["content"].as_str().unwrap_or("");
    if v["encoding"] == "base64" {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(content)
            .unwrap_or_default()
    } else {
        content.as_bytes().to_vec()
    }
}

/// `glassbox run FILE`: submit, show progress while waiting, print the output,
/// exit status, job ID and ledger position; exits with the program's exit code.
pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let code = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let lang = match &args.lang {
        Some(l) => l.clone(),
        None => language_of(&args.file)
            .context("cannot tell the language from the file name: pass --lang")?
            .to_owned(),
    };
    let stdin = match &args.stdin {
        None => None,
        Some(p) if p.as_os_str() == "-" => {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
            Some(s)
        }
        Some(p) => {
            Some(std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
        }
    };
    let api = args.api.clone().unwrap_or_else(|| {
        format!(
            "http://{}",
            std::env::var("GLASSBOX_HTTP_ADDR").unwrap_or_else(|_| "127.0.0.1:8080".into())
        )
    });
    let token = match &args.token {
        Some(t) => t.clone(),
        None => crate::mint_token(&crate::TokenArgs {
            tenant: args.tenant.clone(),
            subject: std::env::var("USER").unwrap_or_else(|_| "developer".into()),
            roles: "submitter".into(),
            app: Some("glassbox-cli".into()),
            agent: None,
            ttl: 3600,
        })
        .context("no --token: minting a development token")?,
    };
    let client = reqwest::Client::new();
    let mut body =
        json!({"language": lang, "code": code, "args": args.args, "egress": args.egress});
    if let Some(s) = stdin {
        body["stdin"] = s.into();
    }
    let mut req = client
        .post(format!("{api}/v1/jobs"))
        .bearer_auth(&token)
        .json(&body);
    if let Some(k) = &args.idempotency_key {
        req = req.header("Idempotency-Key", k);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("submitting to {api} (is glassbox dev running?)"))?;
    let status = resp.status();
    let receipt: Value = resp.json().await.context("reading the answer")?;
    if !status.is_success() {
        if args.json {
            println!("{receipt}");
        } else {
            eprintln!(
                "refused ({status}): {}",
                receipt["detail"].as_str().unwrap_or("")
            );
        }
        return Ok(ExitCode::from(1));
    }
    let id = receipt["job_id"].as_str().unwrap_or("").to_owned();
    let mut position = receipt["position"].as_u64().unwrap_or(0);
    if args.no_wait {
        println!("{receipt}");
        return Ok(ExitCode::SUCCESS);
    }
    if !args.json {
        eprintln!("job {id}: accepted (ledger position {position})");
    }
    let mut last = JobStatus::Accepted;
    let job = loop {
        let r = client
            .get(format!("{api}/v1/jobs/{id}?min_position={position}&wait=5"))
            .bearer_auth(&token)
            .send()
            .await?;
        let job: Value = r.json().await?;
        let Ok(s) = serde_json::from_value::<JobStatus>(job["status"].clone()) else {
            anyhow::bail!("reading job {id}: {job}");
        };
        position = position.max(job["last_position"].as_u64().unwrap_or(0));
        if s != last && !args.json {
            eprintln!("job {id}: {s}");
            last = s;
        }
        if s.is_terminal() {
            break (job, s);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (job, status) = job;
    let out: Value = if job["outcome"].is_null() {
        Value::Null
    } else {
        client
            .get(format!("{api}/v1/jobs/{id}/output"))
            .bearer_auth(&token)
            .send()
            .await?
            .json()
            .await?
    };
    let exit = out["exit_code"].as_i64();
    if args.json {
        println!(
            "{}",
            json!({"job_id": id, "status": job["status"], "outcome": job["outcome"], "exit_code": exit,
                   "signal": out["signal"], "reasons": job["reasons"], "stdout": out["stdout"],
                   "stderr": out["stderr"], "ledger_position": position})
        );
    } else {
        use std::io::Write as _;
        std::io::stdout().write_all(&show_stream(&out["stdout"]))?;
        std::io::stderr().write_all(&show_stream(&out["stderr"]))?;
        eprintln!(
            "job {id}: {status} ({}), exit code {}, ledger position {position}",
            job["outcome"].as_str().unwrap_or("no outcome"),
            exit.map_or("none".to_owned(), |c| c.to_string()),
        );
        if status == JobStatus::Failed {
            eprintln!("  reasons: {}", job["reasons"]);
        }
    }
    Ok(match (status, exit) {
        (JobStatus::Completed, Some(c)) => ExitCode::from(c.clamp(0, 255) as u8),
        _ => ExitCode::from(1),
    })
}
