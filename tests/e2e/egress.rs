//! Egress through the API under real runsc: a job that asks for destinations
//! gets a proxy of its own; "the outside" is a real HTTPS server on the
//! host's loopback (127.0.0.1:8443, named `outside.test` by the runner's
//! pinned hosts, as tenant acme's `outside.test:8443` rule expects).

use super::*;
use glassbox_egress::StaticHosts;
use std::sync::{Arc, OnceLock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The outside server's port (acme's rule names it).
const OUTSIDE_PORT: u16 = 8443;
/// The plain HTTP server's port (acme's `other.test` rule names it).
const OTHER_PORT: u16 = 8444;
/// Bytes `/big` answers with.
const BIG: usize = 1 << 20;

/// The `Authorization` headers the outside servers received.
static RECEIVED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Answers one HTTP request on `s`: `/big` is [`BIG`] bytes, `/echo` says
/// which `Authorization` header arrived, anything else a greeting.
async fn answer<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut s: S) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let auth = text
        .lines()
        .find_map(|l| l.strip_prefix("Authorization: "))
        .unwrap_or("")
        .to_owned();
    let body = if head.starts_with(b"GET /big") {
        vec![b'x'; BIG]
    } else if head.starts_with(b"GET /echo") {
        if let Ok(mut r) = RECEIVED.lock() {
            r.push(auth.clone());
        }
        format!("you sent: {auth}").into_bytes()
    } else {
        b"hello from outside".to_vec()
    };
    let _ = s
        .write_all(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await;
    let _ = s.write_all(&body).await;
    let _ = s.shutdown().await;
}

/// The CA certificate (PEM) of "the outside": HTTPS on 127.0.0.1:8443 with a
/// certificate for `outside.test` from that CA, and plain HTTP on
/// 127.0.0.1:8444 (`other.test`). Started once for the whole test binary, on
/// its own thread (each test has a runtime of its own).
fn outside() -> &'static str {
    static PEM: OnceLock<String> = OnceLock::new();
    PEM.get_or_init(|| {
        glassbox_platform::install_crypto_provider();
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca_params = rcgen::CertificateParams::default();
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "outside test CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca = ca_params.self_signed(&ca_key).expect("CA");
        let pem = ca.pem();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["outside.test".to_owned()])
            .expect("params")
            .signed_by(&key, &issuer)
            .expect("certificate");
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .expect("tls config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let (ready, started) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let tls = tokio::net::TcpListener::bind(("127.0.0.1", OUTSIDE_PORT))
                    .await
                    .expect("the outside server needs 127.0.0.1:8443");
                let plain = tokio::net::TcpListener::bind(("127.0.0.1", OTHER_PORT))
                    .await
                    .expect("the other server needs 127.0.0.1:8444");
                let _ = ready.send(());
                tokio::spawn(async move {
                    while let Ok((s, _)) = plain.accept().await {
                        tokio::spawn(answer(s));
                    }
                });
                while let Ok((s, _)) = tls.accept().await {
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        if let Ok(t) = acceptor.accept(s).await {
                            answer(t).await;
                        }
                    });
                }
            });
        });
        started
            .recv_timeout(Duration::from_secs(10))
            .expect("the outside server started");
        pem
    })
}

fn settings(max_connections: u64, max_bytes: u64) -> EgressSettings {
    let mut e = EgressSettings {
        resolver: Arc::new(
            StaticHosts::parse(
                "outside.test=127.0.0.1,other.test=127.0.0.1,api.example.com=127.0.0.1",
            )
            .expect("hosts"),
        ),
        socket_root: PathBuf::from("/run/glassbox-test/egress"),
        ..EgressSettings::default()
    };
    e.limits.max_connections = max_connections;
    e.limits.max_bytes = max_bytes;
    e
}

/// A brokered secret's set-up: a directory of its own, the value
/// (`tok-<32 hex>`: its shape is known to a program, so it can look for it;
/// the value itself is not), a secrets file holding it as `OUTSIDE_TOKEN`, and
/// egress settings whose upstream roots trust the outside's CA.
fn brokering() -> (PathBuf, String, PathBuf, EgressSettings) {
    let ca = outside();
    let dir = std::env::temp_dir().join(format!("gb-broker-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let value = format!("tok-{}", uuid::Uuid::new_v4().simple());
    let secrets = dir.join("secrets.json");
    std::fs::write(&secrets, json!({ "OUTSIDE_TOKEN": value }).to_string()).expect("secrets");
    let ca_file = dir.join("outside-ca.pem");
    std::fs::write(&ca_file, ca).expect("ca");
    let mut egress = settings(32, 64 << 20);
    egress.trust_upstream(&ca_file).expect("trust");
    (dir, value, secrets, egress)
}

/// Python helpers the programs share: a raw CONNECT through the proxy
/// (returns the whole answer) and a direct connection attempt.
const HELPERS: &str = r#"
import json, os, socket, ssl, urllib.request
def connect(target):
    s = socket.create_connection(("127.0.0.1", 3128), timeout=20)
    s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    data = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        data += b
        if data.startswith(b"HTTP/1.1 200"):
            break
    s.close()
    return data.decode(errors="replace")
def direct(host, port):
    try:
        socket.create_connection((host, port), timeout=3)
        return "connected"
    except OSError:
        return "refused"
def get(path):
    ctx = ssl.create_default_context(cafile="ca.pem")
    return urllib.request.urlopen("https://outside.test:8443" + path, context=ctx, timeout=20).read()
"#;

fn ledger_position(answer: &str) -> u64 {
    answer
        .lines()
        .find_map(|l| l.strip_prefix("ledger position: "))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no ledger position in {answer:?}"))
}

fn of_type<'a>(records: &'a [StoredRecord], t: &str) -> Vec<&'a StoredRecord> {
    records
        .iter()
        .filter(|r| r.record.event_type == t)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_reaches_only_what_it_asked_for_and_the_tenant_allows_and_every_connection_is_recorded()
 {
    let ca = outside();
    let s = stack_with(SecretProvider::None, &[], None, settings(16, 64 << 20)).await;
    let code = format!(
        "{HELPERS}\n{}",
        r#"
out = {"proxy": os.environ.get("HTTPS_PROXY")}
out["allowed"] = get("/").decode()
for t in ["denied.test:443", "127.0.0.1:5432", "169.254.169.254:80", "api.example.com:443"]:
    out[t] = connect(t)
out["direct"] = [direct(h, p) for h, p in [("127.0.0.1", 8443), ("1.1.1.1", 443), ("169.254.169.254", 80)]]
try:
    socket.getaddrinfo("outside.test", 443)
    out["dns"] = "resolved"
except OSError:
    out["dns"] = "none"
print(json.dumps(out))
"#
    );
    let (status, receipt) = s
        .submit(
            "acme",
            json!({"language": "python", "code": code,
                   "files": [{"path": "ca.pem", "content": ca}],
                   "egress": ["outside.test:8443", "api.example.com:443"],
                   "limits": {"wall_time_ms": 60000}}),
        )
        .await;
    assert_eq!(status, 201, "{receipt}");
    let job = s.wait("acme", &receipt).await;
    let id = receipt["job_id"].as_str().expect("id");
    let (_, output) = s.get("acme", &format!("/v1/jobs/{id}/output")).await;
    assert_eq!(job["status"], "completed", "{job}\n{output}");
    let out: Value = serde_json::from_str(output["stdout"]["content"].as_str().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{e}: {output}"));
    assert_eq!(out["proxy"], "http://127.0.0.1:3128");
    // The allowed host answers, over TLS verified end to end.
    assert_eq!(out["allowed"], "hello from outside", "{out}");
    // Each refusal is a readable 403: host, rule, reason, ledger position.
    let denied = out["denied.test:443"].as_str().expect("answer");
    assert!(denied.starts_with("HTTP/1.1 403"), "{denied}");
    assert!(denied.contains("host: denied.test:443"), "{denied}");
    assert!(
        denied.contains("rule: not among the destinations this sandbox asked for"),
        "{denied}"
    );
    for t in ["127.0.0.1:5432", "169.254.169.254:80"] {
        let a = out[t].as_str().expect("answer");
        assert!(a.starts_with("HTTP/1.1 403"), "{t}: {a}");
    }
    // Asked for and allowed by the tenant, but the name resolves to loopback
    // and the rule does not allow private addresses.
    let private = out["api.example.com:443"].as_str().expect("answer");
    assert!(private.starts_with("HTTP/1.1 403"), "{private}");
    assert!(
        private.contains("the name resolves to a loopback address"),
        "{private}"
    );
    assert!(private.contains("rule: api.example.com:[443]"), "{private}");
    // Nothing gets out directly, and nothing resolves inside.
    assert_eq!(
        out["direct"],
        json!(["refused", "refused", "refused"]),
        "{out}"
    );
    assert_eq!(out["dns"], "none");

    let records = s.stream(id).await;
    // Both destinations were decided at submission.
    let decided: Vec<_> = of_type(&records, "policy.evaluated")
        .into_iter()
        .filter(|r| r.record.data["policy"] == "glassbox.egress")
        .collect();
    assert_eq!(decided.len(), 2, "{:?}", types(&records));
    assert!(decided.iter().all(|r| r.record.data["decision"] == "allow"));
    let allowed = of_type(&records, "egress.allowed");
    assert_eq!(allowed.len(), 1, "{:?}", types(&records));
    let a = &allowed[0].record.data;
    assert_eq!(a["target"], "outside.test:8443");
    assert_eq!(
        a["host"], "outside.test",
        "exactly the host asked for: in clear"
    );
    assert_eq!(a["address"], "127.0.0.1:8443");
    assert_eq!(a["rule"], "outside.test:[8443]");
    assert!(
        a["decided_by"]
            .as_str()
            .is_some_and(|d| d.starts_with("glassbox.egress@sha256:")),
        "{a:?}"
    );
    let closed = of_type(&records, "egress.closed");
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].record.data["connection"], a["connection"]);
    assert!(closed[0].record.data["bytes_in"].as_u64().unwrap_or(0) > 500);
    assert!(closed[0].record.data["bytes_out"].as_u64().unwrap_or(0) > 100);
    let denials = of_type(&records, "egress.denied");
    let reasons: Vec<&str> = denials
        .iter()
        .filter_map(|r| r.record.data["reason"].as_str())
        .collect();
    assert_eq!(
        reasons,
        ["policy", "policy", "policy", "non_public:loopback"],
        "{denials:?}"
    );
    // The 403 names the denial's record.
    assert_eq!(ledger_position(denied), denials[0].record.position);
    assert_eq!(ledger_position(private), denials[3].record.position);
    // A host the program named is a keyed digest, never in clear.
    let d = &denials[0].record.data;
    assert_eq!(d["host"], Value::Null);
    assert_eq!(d["target"], Value::Null);
    let digest = s
        .blobs
        .keyed_digest(id, b"denied.test")
        .await
        .expect("digest");
    assert_eq!(d["host_hmac"], json!(digest), "{d:?}");
    for r in &records {
        let raw = String::from_utf8_lossy(&r.canonical);
        assert!(!raw.contains("denied.test"), "{raw}");
        assert!(!raw.contains("169.254.169.254"), "{raw}");
    }
    // All of it happened while the attempt ran: before its result.
    let t = types(&records);
    let finished = t
        .iter()
        .position(|x| x == "execution.finished")
        .expect("finished");
    assert!(
        t.iter()
            .rposition(|x| x.starts_with("egress."))
            .expect("egress")
            < finished,
        "{t:?}"
    );
    s.store
        .verify(None, &[], None, None)
        .await
        .expect("verify")
        .expect("the ledger verifies");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_and_connection_limits_end_connections_and_each_breach_is_recorded() {
    let ca = outside();
    // Three connections and 256 KiB per sandbox.
    let s = stack_with(SecretProvider::None, &[], None, settings(3, 256 << 10)).await;
    let code = format!(
        "{HELPERS}\n{}",
        r#"
out = {"small": get("/").decode()}
try:
    out["big"] = len(get("/big"))
except Exception as e:
    out["big"] = "cut: " + type(e).__name__
out["more"] = [connect("outside.test:8443").split("\r\n")[0] for _ in range(12)]
print(json.dumps(out))
"#
    );
    let (status, receipt) = s
        .submit(
            "acme",
            json!({"language": "python", "code": code,
                   "files": [{"path": "ca.pem", "content": ca}],
                   "egress": ["outside.test:8443"], "limits": {"wall_time_ms": 60000}}),
        )
        .await;
    assert_eq!(status, 201, "{receipt}");
    let job = s.wait("acme", &receipt).await;
    let id = receipt["job_id"].as_str().expect("id");
    let (_, output) = s.get("acme", &format!("/v1/jobs/{id}/output")).await;
    assert_eq!(job["status"], "completed", "{job}\n{output}");
    let out: Value = serde_json::from_str(output["stdout"]["content"].as_str().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{e}: {output}"));
    // 1 MiB does not fit in the 256 KiB the sandbox has: the connection was cut.
    assert!(
        out["big"].as_str().is_some_and(|b| b.starts_with("cut")),
        "{out}"
    );
    assert_eq!(out["small"], "hello from outside");
    // The third connection is the last one allowed; then every one is refused.
    let more: Vec<&str> = out["more"]
        .as_array()
        .expect("more")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(more[0], "HTTP/1.1 200 Connection established", "{more:?}");
    assert!(
        more[1..].iter().all(|l| *l == "HTTP/1.1 403 Forbidden"),
        "{more:?}"
    );
    let records = s.stream(id).await;
    let limits: Vec<&serde_json::Map<String, Value>> = of_type(&records, "egress.limit_reached")
        .into_iter()
        .map(|r| &r.record.data)
        .collect();
    assert!(
        limits
            .iter()
            .any(|l| l["limit"] == "bytes" && l["max"] == 256 << 10 && l["connection"] == 2),
        "{limits:?}"
    );
    // The flood over the limit: one denial recorded, the other ten summed.
    let over: Vec<_> = of_type(&records, "egress.denied")
        .into_iter()
        .filter(|r| r.record.data["reason"] == "connection_limit")
        .collect();
    assert_eq!(over.len(), 1, "{:?}", types(&records));
    assert!(
        limits
            .iter()
            .any(|l| l["limit"] == "connections" && l["max"] == 3 && l["refused"] == 10),
        "{limits:?}"
    );
    assert_eq!(of_type(&records, "egress.allowed").len(), 3);
    assert_eq!(of_type(&records, "egress.closed").len(), 3);
    s.stop().await;
}

#[tokio::test]
async fn destinations_the_tenant_does_not_allow_refuse_the_job_at_submission() {
    let s = stack_with(SecretProvider::None, &[], None, settings(16, 1 << 20)).await;
    for (tenant, egress, refusal) in [
        (
            "acme",
            json!(["evil.example:443"]),
            "not allowed for tenant acme",
        ),
        (
            "acme",
            json!(["outside.test:8443", "*.example.com:443"]),
            "*.example.com:443 is not allowed",
        ),
        (
            "globex",
            json!(["api.example.com:443"]),
            "not allowed for tenant globex",
        ),
    ] {
        let (status, problem) = s
            .submit(
                tenant,
                json!({"language": "python", "code": "print(1)", "egress": egress}),
            )
            .await;
        assert_eq!(status, 403, "{problem}");
        assert_eq!(problem["code"], "policy_denied");
        assert!(
            problem["detail"]
                .as_str()
                .is_some_and(|d| d.contains(refusal)),
            "{refusal}: {problem}"
        );
        let id = problem["job_id"].as_str().expect("id");
        let job = s.wait(tenant, &problem).await;
        assert_eq!(job["status"], "rejected", "{job}");
        let t = types(&s.stream(id).await);
        assert!(!t.iter().any(|x| x == "execution.claimed"), "{t:?}");
    }
    // A secret the tenant names no hosts for cannot be brokered.
    let (status, problem) = s
        .submit(
            "acme",
            json!({"language": "python", "code": "print(1)", "egress": ["outside.test:8443"],
                   "secrets": [{"name": "OPENAI_API_KEY", "mode": "brokered"}]}),
        )
        .await;
    assert_eq!(status, 403, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("no hosts to be brokered to")),
        "{problem}"
    );
    // Malformed destinations are refused before anything is recorded.
    for bad in [
        json!(["example.com"]),
        json!(["a.test:0"]),
        json!(["[::1]:443"]),
        json!("x:1"),
    ] {
        let (status, problem) = s
            .submit(
                "acme",
                json!({"language": "python", "code": "print(1)", "egress": bad}),
            )
            .await;
        assert_eq!(status, 400, "{bad}: {problem}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sessions_allowlist_changes_while_it_runs_and_applies_from_the_next_connection() {
    let ca = outside();
    let s = stack(SecretProvider::None).await;
    let h = super::sessions::host_with(
        &s,
        false,
        SecretProvider::None,
        Some(glassbox_sandbox_runner::sessions::SessionEgress {
            settings: settings(16, 64 << 20),
            engine: s.engine.clone(),
        }),
    )
    .await;
    // Opened with no way out.
    let (status, opened) = s.open("acme", json!({"language": "python"})).await;
    assert_eq!(status, 201, "{opened}");
    let id = opened["session"]["session_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let setup = format!("{HELPERS}\nopen('ca.pem', 'w').write({})\n", json!(ca));
    let (status, r) = s.exec("acme", &id, json!({ "code": setup })).await;
    assert_eq!(r["outcome"], "succeeded", "{status} {r}");
    let first_line = |r: &Value| {
        r["stdout"]["content"]
            .as_str()
            .unwrap_or("")
            .lines()
            .next()
            .unwrap_or("")
            .to_owned()
    };
    let probe = json!({"code": "print(connect('outside.test:8443').split('\\r\\n')[0])"});
    let (_, r) = s.exec("acme", &id, probe.clone()).await;
    assert_eq!(first_line(&r), "HTTP/1.1 403 Forbidden", "{r}");

    // Allowed by the tenant: from the next connection on.
    let patch = |tenant: &'static str, egress: Value| {
        let s = &s;
        let id = id.clone();
        async move {
            s.call(
                tenant,
                "PATCH",
                &format!("/v1/sessions/{id}/egress"),
                Some(json!({ "egress": egress })),
            )
            .await
        }
    };
    // (With the CLI: `glassbox session egress ID DEST…`.)
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_glassbox-e2e-cli"))
        .args(["session", "egress", &id, "Outside.Test.:8443"])
        .args(["--api", &s.addr, "--token", &token("acme")])
        .output()
        .expect("glassbox session egress");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "outside.test:8443\n");
    let fetch = json!({"code": "print(get('/').decode())"});
    let (_, r) = s.exec("acme", &id, fetch.clone()).await;
    assert_eq!(first_line(&r), "hello from outside", "{r}");

    // Refused by the tenant's policy: recorded, and the list stays.
    let (status, refused) = patch("acme", json!(["evil.example:443"])).await;
    assert_eq!(status, 403, "{refused}");
    let (_, r) = s.exec("acme", &id, fetch).await;
    assert_eq!(first_line(&r), "hello from outside", "{r}");
    // Malformed: 400; another tenant: 404.
    let (status, _) = patch("acme", json!(["no-port.example"])).await;
    assert_eq!(status, 400);
    let (status, _) = patch("globex", json!([])).await;
    assert_eq!(status, 404);

    // Taken away again.
    let (status, _) = patch("acme", json!([])).await;
    assert_eq!(status, 200);
    let (_, r) = s.exec("acme", &id, probe).await;
    assert_eq!(first_line(&r), "HTTP/1.1 403 Forbidden", "{r}");

    let (status, closed) = s
        .call("acme", "DELETE", &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!(status, 200, "{closed}");
    let records = s.session_stream(&id).await;
    let t = types(&records);
    let changes: Vec<&Value> = of_type(&records, "session.egress_changed")
        .into_iter()
        .map(|r| &r.record.data["egress"])
        .collect();
    assert_eq!(
        changes,
        [&json!(["outside.test:8443"]), &json!([])],
        "{t:?}"
    );
    let denied_by_policy = of_type(&records, "policy.evaluated")
        .into_iter()
        .filter(|r| {
            r.record.data["policy"] == "glassbox.egress" && r.record.data["decision"] == "deny"
        })
        .count();
    assert_eq!(denied_by_policy, 1, "{t:?}");
    assert_eq!(of_type(&records, "egress.denied").len(), 2, "{t:?}");
    assert_eq!(of_type(&records, "egress.allowed").len(), 2, "{t:?}");
    assert_eq!(of_type(&records, "egress.closed").len(), 2, "{t:?}");
    // Every egress record before the workspace's destruction.
    let destroyed = t
        .iter()
        .position(|x| x == "workspace.destroyed")
        .expect("destroyed");
    assert!(
        t.iter()
            .rposition(|x| x.starts_with("egress."))
            .expect("egress")
            < destroyed
    );
    s.store
        .verify(None, &[], None, None)
        .await
        .expect("verify")
        .expect("the ledger verifies");
    h.stop.cancel();
    let _ = h.task.await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brokered_secret_reaches_its_host_while_the_sandbox_only_ever_holds_a_placeholder() {
    let (dir, value, secrets, egress) = brokering();
    let s = stack_with(SecretProvider::File(secrets), &[], None, egress).await;
    let code = r#"
import json, os, re, urllib.request
tok = os.environ["OUTSIDE_TOKEN"]
out = {"placeholder": tok}
auth = {"Authorization": "Bearer " + tok}
# The default trust store (SSL_CERT_FILE) holds the sandbox's own CA.
out["echo"] = urllib.request.urlopen(urllib.request.Request("https://outside.test:8443/echo", headers=auth), timeout=20).read().decode()
# The placeholder to a host that is not the secret's: it goes as it is.
out["other"] = urllib.request.urlopen(urllib.request.Request("http://other.test:8444/echo", headers=auth), timeout=20).read().decode()
shape = re.compile(rb"tok-[0-9a-f]{32}")
# A decoy of the same shape, to show the scan finds what is there.
decoy = "tok-" + "ab" * 16
found = set()
for k, v in os.environ.items():
    found.update(m.decode() for m in shape.findall(v.encode()))
for root in ["/workspace", "/run/egress", "/tmp"]:
    for d, _, files in os.walk(root):
        for f in files:
            try:
                found.update(m.decode() for m in shape.findall(open(os.path.join(d, f), "rb").read()))
            except OSError:
                pass
scanned = 0
with open("/proc/self/maps") as maps, open("/proc/self/mem", "rb", 0) as mem:
    for line in maps:
        parts = line.split()
        if "r" not in parts[1]:
            continue
        start, end = (int(x, 16) for x in parts[0].split("-"))
        try:
            mem.seek(start)
            chunk = mem.read(end - start)
        except (OSError, ValueError, OverflowError):
            continue
        scanned += len(chunk)
        found.update(m.decode() for m in shape.findall(chunk))
out["decoy_found"] = decoy in found
found.discard(decoy)
out["found"] = sorted(found)
out["scanned"] = scanned
print(json.dumps(out))
"#;
    let (status, receipt) = s
        .submit(
            "acme",
            json!({"language": "python", "code": code,
                   "secrets": [{"name": "OUTSIDE_TOKEN", "mode": "brokered"}],
                   "egress": ["outside.test:8443", "other.test:8444"],
                   "limits": {"wall_time_ms": 60000}}),
        )
        .await;
    assert_eq!(status, 201, "{receipt}");
    let job = s.wait("acme", &receipt).await;
    let id = receipt["job_id"].as_str().expect("id");
    let (_, output) = s.get("acme", &format!("/v1/jobs/{id}/output")).await;
    assert_eq!(job["status"], "completed", "{job}\n{output}");
    let out: Value = serde_json::from_str(output["stdout"]["content"].as_str().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{e}: {output}"));
    let placeholder = out["placeholder"].as_str().expect("placeholder").to_owned();
    assert!(
        placeholder.starts_with("glassbox-brokered-OUTSIDE_TOKEN-"),
        "{placeholder}"
    );
    // The secret's host got the value; what came back had it masked.
    let received = RECEIVED.lock().map(|r| r.clone()).unwrap_or_default();
    assert!(
        received.contains(&format!("Bearer {value}")),
        "{received:?}"
    );
    assert_eq!(
        out["echo"],
        format!("you sent: Bearer {}", "*".repeat(value.len())),
        "{out}"
    );
    // The other host got the placeholder.
    assert!(
        received.contains(&format!("Bearer {placeholder}")),
        "{received:?}"
    );
    assert_eq!(out["other"], format!("you sent: Bearer {placeholder}"));
    // Env, files and the process's memory never held the value.
    assert_eq!(
        out["decoy_found"], true,
        "the scan finds a value of that shape: {out}"
    );
    assert_eq!(out["found"], json!([]), "{out}");
    assert!(out["scanned"].as_u64().unwrap_or(0) > 1 << 20, "{out}");

    let records = s.stream(id).await;
    let approved = of_type(&records, "secret.injection_approved");
    assert_eq!(
        approved[0].record.data["hosts"],
        json!(["outside.test:8443"])
    );
    assert_eq!(
        of_type(&records, "secret.materialized")[0].record.data["mode"],
        "brokered"
    );
    let brokered: Vec<&serde_json::Map<String, Value>> = of_type(&records, "secret.brokered")
        .into_iter()
        .map(|r| &r.record.data)
        .collect();
    assert!(
        brokered.iter().any(|b| b["substituted"] == true
            && b["header"] == "authorization"
            && b["target"] == "outside.test:8443"),
        "{brokered:?}"
    );
    assert!(
        brokered
            .iter()
            .any(|b| b["substituted"] == false && b["target"] == "other.test:8444"),
        "{brokered:?}"
    );
    assert!(
        of_type(&records, "output.redacted")
            .iter()
            .any(|r| r.record.data["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("egress:"))
                && r.record.data["count"] == 1),
        "{:?}",
        types(&records)
    );
    for r in &records {
        let raw = String::from_utf8_lossy(&r.canonical);
        assert!(!raw.contains(&value), "the value is in {raw}");
        assert!(!raw.contains(&placeholder), "the placeholder is in {raw}");
    }
    s.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sessions_exposed_port_is_reached_only_through_the_control_plane_by_whom_policy_allows() {
    use glassbox_command_api::testing::{claims, sign};
    let s = stack(SecretProvider::None).await;
    let h = super::sessions::host_with(
        &s,
        false,
        SecretProvider::None,
        Some(glassbox_sandbox_runner::sessions::SessionEgress {
            settings: settings(16, 64 << 20),
            engine: s.engine.clone(),
        }),
    )
    .await;
    let (status, opened) = s.open("acme", json!({"language": "python"})).await;
    assert_eq!(status, 201, "{opened}");
    let id = opened["session"]["session_id"]
        .as_str()
        .expect("id")
        .to_owned();
    // A python http.server on the session's own loopback.
    let port = 18123;
    let (_, r) = s
        .exec(
            "acme",
            &id,
            json!({"command": format!("mkdir -p site && echo hello-from-the-session > site/index.html && cd site && setsid python3 -m http.server {port} --bind 127.0.0.1 > /tmp/srv.log 2>&1 & sleep 1")}),
        )
        .await;
    assert_eq!(r["outcome"], "succeeded", "{r}");
    // The host's own loopback is not the session's: nothing there.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());

    let approver = sign(&claims("acme", "bob@acme", &["approver"]));
    let reader = sign(&claims("acme", "eve@acme", &["reader"]));
    let get = |bearer: String, path: String| {
        let (client, url) = (
            s.client.clone(),
            format!("{}/v1/sessions/{id}/ports/{port}/{path}", s.addr),
        );
        async move {
            let r = client
                .get(url)
                .bearer_auth(bearer)
                .send()
                .await
                .expect("get");
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        }
    };
    // Not exposed yet.
    let (status, _) = get(approver.clone(), "index.html".into()).await;
    assert_eq!(status, 404);
    // (With the CLI: `glassbox session expose ID PORT --role approver`.)
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_glassbox-e2e-cli"))
        .args([
            "session",
            "expose",
            &id,
            &port.to_string(),
            "--role",
            "approver",
        ])
        .args(["--api", &s.addr, "--token", &token("acme")])
        .output()
        .expect("glassbox session expose");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("/v1/sessions/{id}/ports/{port}/\n")
    );
    // A caller with a named role reaches it; one without is refused; another
    // tenant does not see the session.
    let (status, body) = get(approver.clone(), "index.html".into()).await;
    assert_eq!((status, body.as_str()), (200, "hello-from-the-session\n"));
    let (status, body) = get(reader.clone(), "index.html".into()).await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = get(token("globex"), "index.html".into()).await;
    assert_eq!(status, 404);
    // Bursts over the tenant's service rate (5 a second) get 429.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(get(approver.clone(), "index.html".into()).await.0);
    }
    assert!(
        statuses.contains(&200) && statuses.contains(&429),
        "{statuses:?}"
    );

    let records = s.session_stream(&id).await;
    let exposures = of_type(&records, "service.exposed");
    assert_eq!(exposures.len(), 1);
    assert_eq!(exposures[0].record.data["roles"], json!(["approver"]));
    let requests: Vec<&serde_json::Map<String, Value>> = of_type(&records, "service.request")
        .into_iter()
        .map(|r| &r.record.data)
        .collect();
    // Every request is on the ledger: 1 + 1 + 12 (another tenant's never
    // reached the session; the one before the exposure was not a request to
    // an exposed port).
    assert_eq!(requests.len(), 14, "{requests:?}");
    assert!(requests.iter().any(|r| r["status"] == 200
        && r["caller"] == "bob@acme"
        && r["decision"] == "allow"
        && r["bytes_out"] == 23));
    assert!(
        requests
            .iter()
            .any(|r| r["status"] == 403 && r["caller"] == "eve@acme" && r["decision"] == "deny")
    );
    assert!(requests.iter().any(|r| r["status"] == 429));
    let digest = s
        .blobs
        .keyed_digest(&id, b"/index.html")
        .await
        .expect("digest");
    assert!(
        requests.iter().all(|r| r["path_hmac"] == json!(digest)),
        "{requests:?}"
    );
    for r in &records {
        assert!(!String::from_utf8_lossy(&r.canonical).contains("index.html"));
    }
    s.store
        .verify(None, &[], None, None)
        .await
        .expect("verify")
        .expect("the ledger verifies");
    h.stop.cancel();
    let _ = h.task.await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_gets_a_brokered_secret_as_a_placeholder_too() {
    let (dir, value, secrets, egress) = brokering();
    let s = stack(SecretProvider::None).await;
    let h = super::sessions::host_with(
        &s,
        false,
        SecretProvider::File(secrets),
        Some(glassbox_sandbox_runner::sessions::SessionEgress {
            settings: egress,
            engine: s.engine.clone(),
        }),
    )
    .await;
    let (status, opened) = s
        .open(
            "acme",
            json!({"language": "python", "egress": ["outside.test:8443"],
                   "secrets": [{"name": "OUTSIDE_TOKEN", "mode": "brokered"}]}),
        )
        .await;
    assert_eq!(status, 201, "{opened}");
    let id = opened["session"]["session_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let code = r#"
import os, urllib.request
tok = os.environ["OUTSIDE_TOKEN"]
req = urllib.request.Request("https://outside.test:8443/echo", headers={"Authorization": "Bearer " + tok})
print(tok)
print(urllib.request.urlopen(req, timeout=20).read().decode())
"#;
    let (_, r) = s.exec("acme", &id, json!({ "code": code })).await;
    assert_eq!(r["outcome"], "succeeded", "{r}");
    let out = r["stdout"]["content"].as_str().unwrap_or("").to_owned();
    let mut lines = out.lines();
    let placeholder = lines.next().unwrap_or("").to_owned();
    assert!(
        placeholder.starts_with("glassbox-brokered-OUTSIDE_TOKEN-"),
        "{out}"
    );
    assert_eq!(
        lines.next(),
        Some(format!("you sent: Bearer {}", "*".repeat(value.len())).as_str()),
        "{out}"
    );
    let received = RECEIVED.lock().map(|r| r.clone()).unwrap_or_default();
    assert!(
        received.contains(&format!("Bearer {value}")),
        "{received:?}"
    );
    // A session's egress records are appended as they come (not waited for by
    // the exec); all of them are in before its workspace's destruction.
    let (status, closed) = s
        .call("acme", "DELETE", &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!(status, 200, "{closed}");
    let records = s.session_stream(&id).await;
    assert!(
        of_type(&records, "secret.brokered")
            .iter()
            .any(|b| b.record.data["substituted"] == true),
        "{:?}",
        types(&records)
    );
    for r in &records {
        assert!(!String::from_utf8_lossy(&r.canonical).contains(&value));
    }
    h.stop.cancel();
    let _ = h.task.await;
    s.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
