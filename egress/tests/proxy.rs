//! The proxy against real sockets on loopback: a local server plays "the
//! outside", a table plays DNS, a vector plays the ledger.

use glassbox_egress::proxy::BoxFuture;
use glassbox_egress::testing::{Memory, client_hello};
use glassbox_egress::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Allows `host:port` pairs; `private` ones may be non-public.
struct Rules(Vec<(&'static str, u16, bool)>);

impl Policy for Rules {
    fn decide(&self, d: &Destination) -> Verdict {
        match self.0.iter().find(|(h, p, _)| *h == d.host && *p == d.port) {
            Some((h, p, private)) => Verdict {
                allow: true,
                rule: format!("{h}:{p}"),
                allow_private: *private,
                decided_by: Some("table".into()),
            },
            None => Verdict {
                allow: false,
                rule: "default deny".into(),
                allow_private: false,
                decided_by: Some("table".into()),
            },
        }
    }
}

struct Table(HashMap<&'static str, Vec<SocketAddr>>, Mutex<u32>);

impl Resolver for Table {
    fn resolve<'a>(
        &'a self,
        d: &'a Destination,
    ) -> BoxFuture<'a, std::io::Result<Vec<SocketAddr>>> {
        Box::pin(async move {
            if let Ok(mut n) = self.1.lock() {
                *n += 1;
            }
            Ok(self
                .0
                .get(d.host.as_str())
                .map(|a| a.iter().map(|x| SocketAddr::new(x.ip(), d.port)).collect())
                .unwrap_or_default())
        })
    }
}

/// An "outside" server: echoes lines with a prefix; `big` sends that many bytes first.
async fn outside(big: usize) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                if big > 0 {
                    let chunk = vec![b'x'; 64 * 1024];
                    let mut left = big;
                    while left > 0 {
                        let n = left.min(chunk.len());
                        if s.write_all(&chunk[..n]).await.is_err() {
                            return;
                        }
                        left -= n;
                    }
                    return;
                }
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0
                        || s.write_all(b"outside:").await.is_err()
                        || s.write_all(&buf[..n]).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    port
}

struct Setup {
    proxy_addr: SocketAddr,
    ledger: Arc<Memory>,
    resolver: Arc<Table>,
    proxy: Arc<Proxy>,
}

async fn setup(
    rules: Vec<(&'static str, u16, bool)>,
    dns: Vec<(&'static str, &str)>,
    limits: Limits,
) -> Setup {
    let ledger = Arc::new(Memory::starting_at(1000));
    let resolver = Arc::new(Table(
        dns.into_iter()
            .map(|(h, ip)| (h, vec![SocketAddr::new(ip.parse().expect("ip"), 0)]))
            .collect(),
        Mutex::new(0),
    ));
    let proxy = Arc::new(Proxy::new(
        Arc::new(Rules(rules)),
        resolver.clone(),
        ledger.clone(),
        limits,
    ));
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let proxy_addr = l.local_addr().expect("addr");
    let serving = proxy.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let p = serving.clone();
            tokio::spawn(async move { p.serve(s).await });
        }
    });
    Setup {
        proxy_addr,
        ledger,
        resolver,
        proxy,
    }
}

async fn connect(s: &Setup, target: &str) -> (TcpStream, String) {
    let mut c = TcpStream::connect(s.proxy_addr).await.expect("proxy");
    c.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if c.read(&mut b).await.expect("read") == 0 {
            break;
        }
        head.push(b[0]);
    }
    (c, String::from_utf8_lossy(&head).into_owned())
}

async fn rest(mut c: TcpStream) -> String {
    let mut s = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_string(&mut s)).await;
    s
}

#[tokio::test]
async fn an_allowed_host_is_reached_through_a_pinned_address_and_the_bytes_are_counted() {
    let port = outside(0).await;
    let s = setup(
        vec![("outside.test", port, true)],
        vec![("outside.test", "127.0.0.1")],
        Limits::default(),
    )
    .await;
    let (mut c, head) = connect(&s, &format!("outside.test:{port}")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    c.write_all(b"hello").await.expect("write");
    let mut buf = [0u8; 13];
    c.read_exact(&mut buf).await.expect("read");
    assert_eq!(&buf, b"outside:hello");
    drop(c);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let e = s.ledger.events();
    assert!(
        matches!(&e[0], EgressEvent::Allowed { connection: 1, dest, rule, addr, decided_by }
        if dest.host == "outside.test" && rule == &format!("outside.test:{port}") && addr.port() == port
            && decided_by.as_deref() == Some("table")),
        "{e:?}"
    );
    assert!(
        matches!(
            &e[1],
            EgressEvent::Closed {
                connection: 1,
                bytes_out: 5,
                bytes_in: 13,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        *s.resolver.1.lock().expect("count"),
        1,
        "resolved once, here"
    );
}

#[tokio::test]
async fn a_denied_host_gets_a_readable_403_naming_host_rule_and_ledger_position() {
    let s = setup(vec![], vec![], Limits::default()).await;
    let (c, head) = connect(&s, "api.example.com:443").await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    let body = rest(c).await;
    assert!(body.contains("host: api.example.com:443"), "{body}");
    assert!(body.contains("rule: default deny"), "{body}");
    assert!(body.contains("ledger position: 1001"), "{body}");
    assert!(matches!(
        &s.ledger.events()[0],
        EgressEvent::Denied {
            denial: Denial::Policy,
            ..
        }
    ));
}

#[tokio::test]
async fn ip_literals_loopback_metadata_and_names_resolving_to_private_addresses_are_refused() {
    let port = outside(0).await;
    // The rules allow each destination by name or literal, but not private addresses.
    let s = setup(
        vec![
            ("127.0.0.1", 5432, false),
            ("169.254.169.254", 80, false),
            ("rebind.test", port, false),
            ("inside.test", 443, false),
        ],
        vec![("rebind.test", "127.0.0.1"), ("inside.test", "10.0.0.7")],
        Limits::default(),
    )
    .await;
    for (target, want) in [
        ("127.0.0.1:5432", "IP addresses are refused"),
        ("169.254.169.254:80", "IP addresses are refused"),
        ("[::1]:22", "no rule allows"),
        (
            &format!("rebind.test:{port}") as &str,
            "resolves to a loopback address",
        ),
        ("inside.test:443", "resolves to a private address"),
        ("nowhere.test:443", "no rule allows"),
    ] {
        let (c, head) = connect(&s, target).await;
        assert!(head.starts_with("HTTP/1.1 403"), "{target}: {head}");
        let body = rest(c).await;
        assert!(body.contains(want), "{target}: {body}");
    }
    assert!(
        s.ledger
            .events()
            .iter()
            .all(|e| matches!(e, EgressEvent::Denied { .. }))
    );
}

#[tokio::test]
async fn host_header_and_tls_server_name_must_agree_with_the_destination() {
    let port = outside(0).await;
    let s = setup(
        vec![("outside.test", port, true)],
        vec![("outside.test", "127.0.0.1")],
        Limits::default(),
    )
    .await;
    // Absolute form whose Host names another server.
    let mut c = TcpStream::connect(s.proxy_addr).await.expect("proxy");
    c.write_all(
        format!("GET http://outside.test:{port}/ HTTP/1.1\r\nHost: evil.test\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let body = rest(c).await;
    assert!(
        body.starts_with("HTTP/1.1 400") && body.contains("does not agree"),
        "{body}"
    );
    // A tunnel whose ClientHello names another host: dropped, recorded.
    let (mut c, head) = connect(&s, &format!("outside.test:{port}")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    c.write_all(&client_hello("evil.test"))
        .await
        .expect("write");
    let got = rest(c).await;
    assert!(got.is_empty(), "nothing reached the outside: {got}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(s.ledger.events().iter().any(|e| matches!(e, EgressEvent::Denied { denial: Denial::SniMismatch(n), .. } if n == "evil.test")), "{:?}", s.ledger.events());
    // The same ClientHello naming the right host goes through.
    let (mut c, _) = connect(&s, &format!("outside.test:{port}")).await;
    let hello = client_hello("outside.test");
    c.write_all(&hello).await.expect("write");
    let mut buf = vec![0u8; 8 + hello.len()];
    c.read_exact(&mut buf).await.expect("echo");
    assert_eq!(&buf[..8], b"outside:");
}

#[tokio::test]
async fn byte_and_connection_limits_end_connections_and_are_recorded() {
    let big = outside(4 << 20).await;
    let s = setup(
        vec![("outside.test", big, true)],
        vec![("outside.test", "127.0.0.1")],
        Limits {
            max_connections: 2,
            max_bytes: 256 * 1024,
            timeout: Duration::from_secs(5),
        },
    )
    .await;
    let (c, head) = connect(&s, &format!("outside.test:{big}")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut got = Vec::new();
    let mut c = c;
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut got)).await;
    assert!(
        got.len() <= 256 * 1024,
        "{} bytes passed a 256 KiB limit",
        got.len()
    );
    assert!(got.len() < 4 << 20);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        s.ledger
            .events()
            .iter()
            .any(|e| matches!(e, EgressEvent::ByteLimit { limit: 262144, .. }))
    );
    let (_c2, head) = connect(&s, &format!("outside.test:{big}")).await;
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "second connection: {head}"
    );
    let (c3, head) = connect(&s, &format!("outside.test:{big}")).await;
    assert!(head.starts_with("HTTP/1.1 403"), "third connection: {head}");
    let first = rest(c3).await;
    assert!(first.contains("connection limit"), "{first}");
    // A flood over the limit: each is refused, only the first is recorded;
    // the rest are counted (the service records the count once).
    let recorded = s.ledger.events().len();
    for _ in 0..20 {
        let (c, head) = connect(&s, &format!("outside.test:{big}")).await;
        assert!(head.starts_with("HTTP/1.1 403"), "{head}");
        let body = rest(c).await;
        // They all point at the one record of the breach.
        let position = |b: &str| {
            b.lines()
                .find(|l| l.starts_with("ledger position"))
                .map(str::to_owned)
        };
        assert_eq!(position(&body), position(&first));
    }
    assert_eq!(s.ledger.events().len(), recorded, "{:?}", s.ledger.events());
    assert_eq!(s.proxy.refused_over_limit(), 20);
    assert_eq!(
        s.ledger
            .events()
            .iter()
            .filter(|e| matches!(
                e,
                EgressEvent::Denied {
                    denial: Denial::ConnectionLimit,
                    connection: 3,
                    ..
                }
            ))
            .count(),
        1
    );
}

#[tokio::test]
async fn oversized_and_garbage_requests_are_refused_without_harm() {
    let s = setup(vec![], vec![], Limits::default()).await;
    let mut c = TcpStream::connect(s.proxy_addr).await.expect("proxy");
    let _ = c.write_all(&vec![b'A'; 64 * 1024]).await;
    let body = rest(c).await;
    assert!(
        body.starts_with("HTTP/1.1 400") && body.contains("longer than"),
        "{body}"
    );
    let mut c = TcpStream::connect(s.proxy_addr).await.expect("proxy");
    c.write_all(b"\x00\x01\x02 garbage\r\n\r\n")
        .await
        .expect("write");
    assert!(rest(c).await.starts_with("HTTP/1.1 400"));
    let mut c = TcpStream::connect(s.proxy_addr).await.expect("proxy");
    c.write_all(b"GET /etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    assert!(rest(c).await.starts_with("HTTP/1.1 400"));
}
