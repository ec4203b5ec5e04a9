//! The egress path under real runsc: a program in a `--network=none` sandbox
//! reaches the host only through its forwarder (127.0.0.1:3128, what
//! `HTTP_PROXY` names), the host Unix socket (`--host-uds=open`) and the
//! runner's proxy, which decides every connection; everything else fails.

mod common;

use common::{backend, run, spec};
use glassbox_egress::testing::{Loopback, Memory};
use glassbox_egress::{Destination, EgressEvent, Limits, Policy, Proxy, Verdict};
use glassbox_sandbox_runner::spec::EgressPath;
use std::os::unix::fs::PermissionsExt as _;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Only(String, u16);

impl Policy for Only {
    fn decide(&self, d: &Destination) -> Verdict {
        Verdict {
            allow: d.host == self.0 && d.port == self.1,
            rule: format!("{}:{}", self.0, self.1),
            allow_private: true,
            decided_by: None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_reaches_an_allowed_host_only_through_its_proxy() {
    // "The outside": an HTTP server on the host's loopback.
    let outside = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = outside.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = outside.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nConnection: close\r\n\r\nhello-egress")
                    .await;
            });
        }
    });
    // The proxy on a Unix socket in a directory of its own.
    let dir = std::env::temp_dir().join(format!("gb-egress-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let sock = dir.join(glassbox_sandbox_runner::spec::EGRESS_SOCKET);
    let listener = tokio::net::UnixListener::bind(&sock).expect("socket");
    // The program runs as 65534: the socket is its alone.
    std::os::unix::fs::chown(&sock, Some(65534), Some(65534)).expect("chown");
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let ledger = Arc::new(Memory::starting_at(500));
    let proxy = Arc::new(Proxy::new(
        Arc::new(Only("outside.test".into(), port)),
        Arc::new(Loopback),
        ledger.clone(),
        Limits::default(),
    ));
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let p = proxy.clone();
            tokio::spawn(async move { p.serve(s).await });
        }
    });

    let b = backend().await;
    let mut s = spec(
        "python",
        &format!(
            r#"
import os, socket, urllib.request, urllib.error
print("proxy", os.environ.get("HTTP_PROXY"))
print("allowed", urllib.request.urlopen("http://outside.test:{port}/x", timeout=10).read().decode())
try:
    urllib.request.urlopen("http://denied.test/", timeout=10)
    print("denied no")
except urllib.error.HTTPError as e:
    print("denied", e.code, e.read().decode().replace("\n", "|"))
for target in [("127.0.0.1", {port}), ("1.1.1.1", 80), ("169.254.169.254", 80)]:
    try:
        socket.create_connection(target, timeout=3)
        print("direct connected", target)
    except OSError as e:
        print("direct refused", target[0])
try:
    socket.getaddrinfo("outside.test", 80)
    print("dns resolved")
except OSError:
    print("dns none")
"#
        ),
    );
    s.egress = Some(EgressPath {
        socket_dir: dir.clone(),
        agent: glassbox_sandbox_runner::local::session::find_agent().expect("session agent"),
        services: false,
    });
    let r = run(&b, s).await;
    let out = String::from_utf8_lossy(&r.stdout.bytes).into_owned();
    let err = String::from_utf8_lossy(&r.stderr.bytes).into_owned();
    assert_eq!(r.exit_code, Some(0), "{out}\n{err}");
    assert!(out.contains("proxy http://127.0.0.1:3128"), "{out}");
    assert!(out.contains("allowed hello-egress"), "{out}\n{err}");
    assert!(out.contains("denied 403"), "{out}");
    assert!(out.contains("host: denied.test:80"), "{out}");
    assert!(out.contains("ledger position: 50"), "{out}");
    // Nothing else gets out: not the host's loopback (the sandbox has its
    // own), not the internet, not the metadata address; no DNS inside.
    assert!(out.contains("direct refused 127.0.0.1"), "{out}");
    assert!(out.contains("direct refused 1.1.1.1"), "{out}");
    assert!(out.contains("direct refused 169.254.169.254"), "{out}");
    assert!(out.contains("dns none"), "{out}");
    let events = ledger.events();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, EgressEvent::Allowed { dest, .. } if dest.host == "outside.test")),
        "{events:?}"
    );
    assert!(
        events.iter().any(
            |e| matches!(e, EgressEvent::Denied { dest: Some(d), .. } if d.host == "denied.test")
        ),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, EgressEvent::Closed { bytes_in, .. } if *bytes_in > 0)),
        "{events:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
