//! `glassbox bench egress`: a 100 MB download through a CONNECT tunnel and
//! small requests each on a new connection (the proxy parses, decides,
//! resolves, connects and records every one), made **from inside a gVisor
//! sandbox** through the whole egress path (the forwarder on the sandbox's
//! loopback, the host Unix socket, the proxy), next to the same client code
//! run on the host straight to the same local server, in the same run.
//! `--host-only` measures the proxy core alone (a host client through the
//! proxy vs directly), which separates what the proxy adds from what the
//! sandbox path adds. Needs root, runsc, the runtime images and `python3` on
//! the host (the baseline runs the same Python client).

use crate::bench::{percentile, round};
use clap::Args;
use glassbox_egress::testing::{Loopback, Memory};
use glassbox_egress::{Destination, Limits, Policy, Proxy, Verdict};
use serde_json::json;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Args)]
pub struct EgressBench {
    /// Megabytes downloaded (each way: direct and through the proxy).
    #[arg(long, default_value_t = 100)]
    pub megabytes: usize,
    /// Small requests (each way).
    #[arg(long, default_value_t = 1000)]
    pub requests: usize,
    /// Only the proxy core on the host (no sandbox).
    #[arg(long)]
    pub host_only: bool,
    /// Where the sandbox's bundle and workspace go.
    #[arg(long, default_value = "/run/glassbox-bench")]
    pub base_dir: std::path::PathBuf,
}

/// The client, the same inside the sandbox and on the host: `proxy` goes
/// through the forwarder (`127.0.0.1:3128`, what `HTTP(S)_PROXY` names) with
/// `CONNECT`; `direct` connects to the server. Prints its timings as JSON.
const CLIENT: &str = r#"
import json, socket, sys, time
mode, port, requests, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def connect():
    if mode == "direct":
        return socket.create_connection(("127.0.0.1", port), timeout=60)
    s = socket.create_connection(("127.0.0.1", 3128), timeout=60)
    s.sendall(f"CONNECT outside.test:{port} HTTP/1.1\r\n\r\n".encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        b = s.recv(1)
        if not b:
            raise OSError("the proxy closed")
        head += b
    if not head.startswith(b"HTTP/1.1 200"):
        raise OSError(head.decode(errors="replace"))
    return s
def get(path):
    s = connect()
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: outside.test\r\n\r\n".encode())
    s.shutdown(socket.SHUT_WR)
    buf = bytearray(1 << 18)
    total = 0
    while True:
        n = s.recv_into(buf)
        if n == 0:
            break
        total += n
    s.close()
    return total
out = {"download_s": [], "download_bytes": 0, "request_ms": []}
for _ in range(rounds):
    t = time.perf_counter()
    out["download_bytes"] = get("/big")
    out["download_s"].append(time.perf_counter() - t)
for _ in range(requests):
    t = time.perf_counter()
    get("/small")
    out["request_ms"].append((time.perf_counter() - t) * 1000)
print(json.dumps(out))
"#;

struct AllowOutside;

impl Policy for AllowOutside {
    fn decide(&self, d: &Destination) -> Verdict {
        Verdict {
            allow: d.host == "outside.test",
            rule: "outside.test".into(),
            allow_private: true,
            decided_by: None,
        }
    }
}

/// "The outside": `GET /big` answers `size` bytes, anything else a short body.
async fn outside(size: usize) -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let port = l.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&b[..n]),
                    }
                }
                if head.starts_with(b"GET /big") {
                    let _ = s
                        .write_all(
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n").as_bytes(),
                        )
                        .await;
                    let chunk = vec![7u8; 256 * 1024];
                    let mut left = size;
                    while left > 0 {
                        let n = left.min(chunk.len());
                        if s.write_all(&chunk[..n]).await.is_err() {
                            return;
                        }
                        left -= n;
                    }
                } else {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await;
                }
            });
        }
    });
    Ok(port)
}

/// Opens a connection to the outside, directly or through the proxy.
async fn open(proxy: Option<SocketAddr>, port: u16) -> anyhow::Result<TcpStream> {
    match proxy {
        None => Ok(TcpStream::connect(("127.0.0.1", port)).await?),
        Some(p) => {
            let mut s = TcpStream::connect(p).await?;
            s.write_all(format!("CONNECT outside.test:{port} HTTP/1.1\r\n\r\n").as_bytes())
                .await?;
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                anyhow::ensure!(s.read(&mut b).await? == 1, "the proxy closed");
                head.push(b[0]);
            }
            anyhow::ensure!(
                head.starts_with(b"HTTP/1.1 200"),
                "{}",
                String::from_utf8_lossy(&head)
            );
            Ok(s)
        }
    }
}

/// GETs `path` on a new connection; returns the bytes read.
async fn get(proxy: Option<SocketAddr>, port: u16, path: &str) -> anyhow::Result<u64> {
    let mut s = open(proxy, port).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: outside.test\r\n\r\n").as_bytes())
        .await?;
    s.shutdown().await.ok();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        match s.read(&mut buf).await? {
            0 => return Ok(total),
            n => total += n as u64,
        }
    }
}

pub async fn run(args: EgressBench) -> anyhow::Result<ExitCode> {
    if args.host_only {
        host_only(args).await
    } else {
        from_a_sandbox(args).await
    }
}

fn median_of(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The client's timings (`download_s`, `request_ms`) from its JSON output.
fn timings(out: &[u8], who: &str) -> anyhow::Result<(Vec<f64>, u64, Vec<f64>)> {
    let v: serde_json::Value = serde_json::from_slice(out).map_err(|e| {
        anyhow::anyhow!(
            "{who}: not the client's JSON ({e}): {}",
            String::from_utf8_lossy(out)
        )
    })?;
    let list = |k: &str| -> Vec<f64> {
        v[k].as_array()
            .map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect())
            .unwrap_or_default()
    };
    Ok((
        list("download_s"),
        v["download_bytes"].as_u64().unwrap_or(0),
        list("request_ms"),
    ))
}

/// The whole path from inside a sandbox, next to the host straight to the server.
async fn from_a_sandbox(args: EgressBench) -> anyhow::Result<ExitCode> {
    use glassbox_sandbox_runner::backend::SandboxBackend as _;
    use glassbox_sandbox_runner::{LocalConfig, LocalRunsc};
    let size = args.megabytes << 20;
    let port = outside(size).await?;
    let rounds = 3usize;
    let client_args = |mode: &str| {
        vec![
            mode.to_owned(),
            port.to_string(),
            args.requests.to_string(),
            rounds.to_string(),
        ]
    };
    // The baseline: the same client on the host, straight to the server.
    let host = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(CLIENT)
        .args(client_args("direct"))
        .output()
        .await
        .map_err(|e| anyhow::anyhow!("python3 on the host (the baseline's client): {e}"))?;
    anyhow::ensure!(
        host.status.success(),
        "the host client failed: {}",
        String::from_utf8_lossy(&host.stderr)
    );
    let (host_dl, host_bytes, host_req) = timings(&host.stdout, "host")?;

    // The sandbox's proxy, as the runner starts it (a socket directory of
    // its own, a memory recorder instead of the ledger: an allowed
    // connection never waits for its record).
    let settings = glassbox_sandbox_runner::egress::EgressSettings {
        resolver: Arc::new(Loopback),
        limits: Limits {
            max_connections: u64::MAX,
            max_bytes: u64::MAX,
            timeout: Duration::from_secs(10),
        },
        socket_root: args.base_dir.join("egress"),
        ..Default::default()
    };
    let agent = settings.agent.clone().ok_or_else(|| {
        anyhow::anyhow!("glassbox-session-agent was not found (the forwarder inside the sandbox)")
    })?;
    std::fs::create_dir_all(&settings.socket_root)?;
    let dir = settings
        .socket_root
        .join(format!("bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir)?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    }
    let sock = dir.join(glassbox_sandbox_runner::spec::EGRESS_SOCKET);
    let listener = tokio::net::UnixListener::bind(&sock)?;
    std::os::unix::fs::chown(&sock, Some(65534), Some(65534))?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))?;
    }
    let recorder = Arc::new(Memory::starting_at(0));
    let proxy = Arc::new(Proxy::new(
        Arc::new(AllowOutside),
        settings.resolver.clone(),
        recorder.clone(),
        settings.limits,
    ));
    let serving = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let p = proxy.clone();
            tokio::spawn(async move { p.serve(s).await });
        }
    });
    let (backend, _) = LocalRunsc::start(LocalConfig {
        runner_id: "benchegress".into(),
        base_dir: args.base_dir.clone(),
        ..LocalConfig::default()
    })
    .await?;
    let mut spec = glassbox_sandbox_runner::spec::ExecutionSpec::new("python", CLIENT);
    spec.args = client_args("proxy");
    spec.limits.wall_time_ms = 600_000;
    spec.limits.stdout_bytes = 1 << 20;
    spec.egress = Some(glassbox_sandbox_runner::spec::EgressPath {
        socket_dir: dir.clone(),
        agent,
        services: false,
    });
    let r = backend
        .execute(spec, tokio_util::sync::CancellationToken::new())
        .await?;
    serving.abort();
    let _ = std::fs::remove_dir_all(&dir);
    anyhow::ensure!(
        r.exit_code == Some(0),
        "the sandbox's client failed ({:?}): {}",
        r.exit_code,
        String::from_utf8_lossy(&r.stderr.bytes)
    );
    let (box_dl, box_bytes, box_req) = timings(&r.stdout.bytes, "sandbox")?;
    anyhow::ensure!(
        box_bytes as usize > size && host_bytes as usize > size,
        "short downloads: {box_bytes} / {host_bytes}"
    );
    let mbps = |s: f64| args.megabytes as f64 / s;
    let (hd, bd) = (median_of(&host_dl), median_of(&box_dl));
    let (hr, br) = (median_of(&host_req), median_of(&box_req));
    println!(
        "{}",
        json!({
            "bench": "egress",
            "scope": "from inside a gVisor sandbox (forwarder, host socket, proxy) vs the same client on the host straight to the server",
            "build": if cfg!(debug_assertions) { "debug" } else { "release" },
            "download_mb": args.megabytes,
            "rounds": rounds,
            "download_mb_per_s": {"sandbox_p50": round(mbps(bd)), "baseline_host_direct_p50": round(mbps(hd))},
            "throughput_ratio": round(hd / bd),
            "requests": args.requests,
            "request_ms": {"sandbox_p50": round(br), "baseline_host_direct_p50": round(hr)},
            "added_p50_ms_per_request": round(br - hr),
            "events_recorded": recorder.events().len(),
        })
    );
    Ok(ExitCode::SUCCESS)
}

async fn host_only(args: EgressBench) -> anyhow::Result<ExitCode> {
    let size = args.megabytes << 20;
    let port = outside(size).await?;
    let recorder = Arc::new(Memory::starting_at(0));
    let proxy = Arc::new(Proxy::new(
        Arc::new(AllowOutside),
        Arc::new(Loopback),
        recorder.clone(),
        Limits {
            max_connections: u64::MAX,
            max_bytes: u64::MAX,
            timeout: Duration::from_secs(10),
        },
    ));
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let proxy_addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let p = proxy.clone();
            tokio::spawn(async move { p.serve(s).await });
        }
    });
    // Downloads, alternating direct and proxied, three each.
    let (mut direct, mut proxied) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        for (via, out) in [(None, &mut direct), (Some(proxy_addr), &mut proxied)] {
            let t = Instant::now();
            let n = get(via, port, "/big").await?;
            out.push(t.elapsed());
            anyhow::ensure!(n as usize > size, "short download: {n}");
        }
    }
    direct.sort();
    proxied.sort();
    let mbps = |d: Duration| args.megabytes as f64 / d.as_secs_f64();
    let (d50, p50) = (percentile(&direct, 0.5), percentile(&proxied, 0.5));
    // Small requests, each on a new connection, alternating.
    let (mut small_direct, mut small_proxied) = (Vec::new(), Vec::new());
    for _ in 0..args.requests {
        for (via, out) in [
            (None, &mut small_direct),
            (Some(proxy_addr), &mut small_proxied),
        ] {
            let t = Instant::now();
            get(via, port, "/small").await?;
            out.push(t.elapsed());
        }
    }
    small_direct.sort();
    small_proxied.sort();
    let (sd, sp) = (
        percentile(&small_direct, 0.5),
        percentile(&small_proxied, 0.5),
    );
    println!(
        "{}",
        json!({
            "bench": "egress",
            "scope": "host only: the proxy core on loopback, not from inside a sandbox",
            "build": if cfg!(debug_assertions) { "debug" } else { "release" },
            "download_mb": args.megabytes,
            "download_mb_per_s": {"proxy_p50": round(mbps(Duration::from_secs_f64(p50 / 1000.0))), "baseline_direct_p50": round(mbps(Duration::from_secs_f64(d50 / 1000.0)))},
            "throughput_ratio": round(d50 / p50),
            "requests": args.requests,
            "request_ms": {"proxy_p50": round(sp), "baseline_direct_p50": round(sd)},
            "added_p50_ms_per_request": round(sp - sd),
            "events_recorded": recorder.events().len(),
        })
    );
    Ok(ExitCode::SUCCESS)
}
