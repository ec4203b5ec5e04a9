//! `glassbox bench egress`: the egress proxy core on loopback, next to the
//! same transfers made directly in the same run — a 100 MB download through a
//! CONNECT tunnel, and small requests each on a new connection (the proxy
//! parses, decides, resolves, connects and records every one). Host only:
//! the runner does not start proxies for sandboxes yet (issue 15), so this
//! measures what the proxy itself adds, not the path from inside a sandbox.

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
}

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
