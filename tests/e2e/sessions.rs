//! Sessions end to end: opened over HTTP, placed on a runner by its Redis
//! heartbeat, driven call by call through the runner's data-plane gRPC API
//! (tokens signed by the control plane), every call on the ledger — against
//! the real PostgreSQL, Redis, blob store and runsc.

use super::*;
use glassbox_platform::hot::HotState;
use glassbox_platform::runner_token::{RunnerTokenKey, Subject};
use glassbox_sandbox_runner::sessions::{HostConfig, SessionHost};

pub(crate) struct Host {
    pub(crate) runner_id: String,
    pub(crate) addr: String,
    pub(crate) stop: CancellationToken,
    pub(crate) task: tokio::task::JoinHandle<()>,
}

/// A runner serving sessions for the stack (its own runsc backend and ID).
pub(crate) async fn host(s: &Stack, bypass: bool) -> Host {
    host_with(s, bypass, SecretProvider::None, None).await
}

pub(crate) async fn host_with(
    s: &Stack,
    bypass: bool,
    secrets: SecretProvider,
    egress: Option<glassbox_sandbox_runner::sessions::SessionEgress>,
) -> Host {
    let runner_id = format!("ses{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let (backend, _) = LocalRunsc::start(LocalConfig {
        runner_id: runner_id.clone(),
        base_dir: PathBuf::from("/run/glassbox-test"),
        ..LocalConfig::default()
    })
    .await
    .expect("runsc backend");
    let key = RunnerTokenKey::load(&s.data_dir.join("runner-token.key")).expect("token key");
    let hot = HotState::connect(
        "redis://127.0.0.1:6379",
        &glassbox_platform::hot::namespace(&s.db.url),
    )
    .await
    .expect("redis");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = format!("http://{}", listener.local_addr().expect("addr"));
    let core_blobs = glassbox_platform::blob::BlobStore::new(
        &glassbox_platform::blob::Backend::Local(s.data_dir.join("blobs")),
        s.store.pool().clone(),
        glassbox_platform::blob::Kek::load_or_generate(&s.data_dir.join("kek")).expect("kek"),
    )
    .expect("blobs");
    let h = SessionHost::new(
        s.store.clone(),
        core_blobs,
        backend,
        Some(hot),
        HostConfig {
            runner_id: runner_id.clone(),
            capacity: 10,
            advertise: addr.clone(),
            verifier: Some(key.verifier()),
            bypass,
            agent: glassbox_sandbox_runner::local::session::find_agent()
                .expect("the session agent (cargo build -p glassbox-session-agent)"),
            secrets,
            wheel_mirror: None,
            egress,
        },
    );
    let stop = CancellationToken::new();
    let t = stop.clone();
    let task = tokio::spawn(async move {
        let _ = h.serve(listener, t).await;
    });
    // Wait for its first heartbeat.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Host {
        runner_id,
        addr,
        stop,
        task,
    }
}

impl Stack {
    pub(crate) async fn call(
        &self,
        tenant: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let url = format!("{}{path}", self.addr);
        let mut r = match method {
            "POST" => self.client.post(url),
            "DELETE" => self.client.delete(url),
            "PATCH" => self.client.patch(url),
            _ => self.client.get(url),
        }
        .bearer_auth(token(tenant));
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.expect("call");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub(crate) async fn open(&self, tenant: &str, body: Value) -> (u16, Value) {
        self.call(tenant, "POST", "/v1/sessions", Some(body)).await
    }

    pub(crate) async fn exec(&self, tenant: &str, id: &str, body: Value) -> (u16, Value) {
        self.call(
            tenant,
            "POST",
            &format!("/v1/sessions/{id}/exec"),
            Some(body),
        )
        .await
    }

    pub(crate) async fn session_stream(&self, id: &str) -> Vec<StoredRecord> {
        self.store
            .read_stream(&format!("session-{id}"), 1, 10_000)
            .await
            .expect("stream")
    }

    /// Waits until the session's stream holds `event`.
    async fn wait_for(&self, id: &str, event: &str) -> Vec<StoredRecord> {
        for _ in 0..150 {
            let r = self.session_stream(id).await;
            if r.iter().any(|x| x.record.event_type == event) {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "session {id} never recorded {event}: {:?}",
            types(&self.session_stream(id).await)
        );
    }
}

#[tokio::test]
async fn a_session_keeps_state_and_files_between_calls_and_every_call_is_on_the_ledger() {
    let s = stack(SecretProvider::None).await;
    let h = host(&s, false).await;

    let (status, opened) = s.open("acme", json!({"language": "python"})).await;
    assert_eq!(status, 201, "{opened}");
    assert_eq!(opened["session"]["status"], "active", "{opened}");
    assert_eq!(opened["session"]["runner"], h.runner_id.as_str());
    let id = opened["session"]["session_id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert!(
        opened["decisions"]
            .as_array()
            .expect("decisions")
            .iter()
            .any(|d| d["policy"] == "glassbox.admission" && d["decision"] == "allow"),
        "{opened}"
    );

    // Interpreter state survives between execs.
    let (status, r) = s
        .exec("acme", &id, json!({"code": "SECRETCODE9q = 41"}))
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["outcome"], "succeeded", "{r}");
    assert_eq!(r["exec"], 1);
    let (_, r) = s
        .exec("acme", &id, json!({"code": "SECRETCODE9q + 1"}))
        .await;
    assert_eq!(r["stdout"]["content"], "42\n", "{r}");

    // Commands share the workspace with code.
    let (_, r) = s
        .exec(
            "acme",
            &id,
            json!({"command": "echo from-shell > made.txt && ls"}),
        )
        .await;
    assert_eq!(r["outcome"], "succeeded", "{r}");
    assert!(
        r["stdout"]["content"]
            .as_str()
            .unwrap_or("")
            .contains("made.txt"),
        "{r}"
    );
    let (_, r) = s
        .exec(
            "acme",
            &id,
            json!({"code": "print(open('made.txt').read().strip())"}),
        )
        .await;
    assert_eq!(r["stdout"]["content"], "from-shell\n", "{r}");
    let (_, r) = s.exec("acme", &id, json!({"command": "exit 3"})).await;
    assert_eq!(
        (r["outcome"].clone(), r["exit_code"].clone()),
        (json!("failed"), json!(3)),
        "{r}"
    );

    // Files in and out.
    let put = s
        .client
        .put(format!("{}/v1/sessions/{id}/files/data/in.csv", s.addr))
        .bearer_auth(token("acme"))
        .body("a,b\n1,2\n")
        .send()
        .await
        .expect("put");
    assert_eq!(put.status().as_u16(), 201);
    let (_, r) = s
        .exec("acme", &id, json!({"code": "import csv\nrows = list(csv.reader(open('data/in.csv')))\nopen('out.txt','w').write(str(len(rows)))"}))
        .await;
    assert_eq!(r["outcome"], "succeeded", "{r}");
    let got = s
        .client
        .get(format!("{}/v1/sessions/{id}/files/out.txt", s.addr))
        .bearer_auth(token("acme"))
        .send()
        .await
        .expect("get");
    assert_eq!(got.status().as_u16(), 200);
    assert_eq!(got.text().await.expect("body"), "2");
    let (status, listing) = s
        .call(
            "acme",
            "GET",
            &format!("/v1/sessions/{id}/files?path=data"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{listing}");
    assert_eq!(listing["entries"][0]["name"], "in.csv", "{listing}");
    let (status, _) = s
        .call(
            "acme",
            "GET",
            &format!("/v1/sessions/{id}/files/../../etc/passwd"),
            None,
        )
        .await;
    assert!(
        status == 400 || status == 404,
        "escaping the workspace: {status}"
    );

    // Another tenant sees nothing and can do nothing, on every endpoint.
    let (status, _) = s
        .call("globex", "GET", &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!(status, 404);
    let (status, _) = s.exec("globex", &id, json!({"code": "print(1)"})).await;
    assert_eq!(status, 404);
    for (method, path) in [
        ("GET", format!("/v1/sessions/{id}/events")),
        ("GET", format!("/v1/sessions/{id}/files")),
        ("GET", format!("/v1/sessions/{id}/files/out.txt")),
        ("GET", format!("/v1/sessions/{id}/execs/1/output")),
        ("DELETE", format!("/v1/sessions/{id}/files/out.txt")),
        ("DELETE", format!("/v1/sessions/{id}/data")),
        ("DELETE", format!("/v1/sessions/{id}")),
    ] {
        let (status, body) = s.call("globex", method, &path, None).await;
        assert_eq!(status, 404, "{method} {path}: {body}");
    }
    let put = s
        .client
        .put(format!("{}/v1/sessions/{id}/files/x.txt", s.addr))
        .bearer_auth(token("globex"))
        .body("intruder")
        .send()
        .await
        .expect("put");
    assert_eq!(put.status().as_u16(), 404);
    let (_, r) = s
        .exec(
            "acme",
            &id,
            json!({"code": "import os\nprint(os.path.exists('x.txt'))"}),
        )
        .await;
    assert_eq!(r["stdout"]["content"], "False\n", "{r}");

    // A timeout kills the exec, not the session; the interpreter restarts.
    let (_, r) = s
        .exec(
            "acme",
            &id,
            json!({"code": "import time\ntime.sleep(30)", "timeout_ms": 1000}),
        )
        .await;
    assert_eq!(r["outcome"], "timed_out", "{r}");
    assert_eq!(r["context_reset"], true, "{r}");
    let (_, r) = s.exec("acme", &id, json!({"code": "print('alive')"})).await;
    assert_eq!(r["stdout"]["content"], "alive\n", "{r}");

    // Streamed: server-sent events as the output comes, then the result.
    let sse = s
        .client
        .post(format!("{}/v1/sessions/{id}/exec", s.addr))
        .bearer_auth(token("acme"))
        .header("accept", "text/event-stream")
        .json(&json!({"code": "import sys, time\nprint('one', flush=True)\ntime.sleep(0.3)\nprint('two', file=sys.stderr)"}))
        .send()
        .await
        .expect("sse");
    assert_eq!(sse.status().as_u16(), 200);
    assert!(
        sse.headers()["content-type"]
            .to_str()
            .unwrap_or("")
            .starts_with("text/event-stream")
    );
    let body = sse.text().await.expect("events");
    let events: Vec<(String, Value)> = body
        .split("\n\n")
        .filter_map(|block| {
            let name = block.lines().find_map(|l| l.strip_prefix("event: "))?;
            let data = block.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((name.to_owned(), serde_json::from_str(data).ok()?))
        })
        .collect();
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"started"), "{body}");
    assert_eq!(names.last(), Some(&"finished"), "{body}");
    assert!(
        events
            .iter()
            .any(|(n, d)| n == "stdout" && d["data"] == "one\n"),
        "{body}"
    );
    assert!(
        events
            .iter()
            .any(|(n, d)| n == "stderr" && d["data"] == "two\n"),
        "{body}"
    );
    assert_eq!(
        events.last().expect("finished").1["outcome"],
        "succeeded",
        "{body}"
    );

    // A client that gives up cancels its exec; the session goes on.
    let gave_up = s
        .client
        .post(format!("{}/v1/sessions/{id}/exec", s.addr))
        .bearer_auth(token("acme"))
        .timeout(Duration::from_millis(1500))
        .json(&json!({"code": "import time\ntime.sleep(30)"}))
        .send()
        .await;
    assert!(gave_up.is_err(), "the exec should still be running");
    let mut cancelled = false;
    for _ in 0..100 {
        let records = s.session_stream(&id).await;
        if records.iter().any(|r| {
            r.record.event_type == "session.exec_finished"
                && r.record.data["outcome"] == "cancelled"
        }) {
            cancelled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(cancelled, "{:?}", types(&s.session_stream(&id).await));
    let (_, r) = s.exec("acme", &id, json!({"code": "print('after')"})).await;
    assert_eq!(r["stdout"]["content"], "after\n", "{r}");

    // The stored output of an earlier exec.
    let (status, out) = s
        .call(
            "acme",
            "GET",
            &format!("/v1/sessions/{id}/execs/2/output"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["stdout"]["content"], "42\n");

    // Close: recorded, the sandbox destroyed, further calls refused.
    let (status, closed) = s
        .call("acme", "DELETE", &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!(status, 200, "{closed}");
    assert_eq!(closed["status"], "closed");
    let (status, _) = s.exec("acme", &id, json!({"code": "print(1)"})).await;
    assert_eq!(status, 409);
    let records = s.wait_for(&id, "workspace.destroyed").await;
    let t = types(&records);
    for e in [
        "session.requested",
        "policy.evaluated",
        "session.opened",
        "session.started",
        "session.exec_started",
        "session.exec_finished",
        "session.file_written",
        "session.file_read",
        "session.files_listed",
        "session.closed",
        "workspace.destroyed",
    ] {
        assert!(t.iter().any(|x| x == e), "{e} missing from {t:?}");
    }
    // The session's sandbox ran on the python image, the one `glassbox images list` shows.
    let started = records
        .iter()
        .find(|r| r.record.event_type == "session.started")
        .expect("session.started");
    assert_eq!(
        started.record.data["image_digest"].as_str(),
        crate::listed_images().get("python").map(String::as_str),
        "{:?}",
        started.record.data
    );
    // Code, file names and output are in encrypted blobs, never in clear.
    for r in &records {
        let text = Value::Object(r.record.data.clone()).to_string();
        for marker in ["SECRETCODE9q", "in.csv", "made.txt", "from-shell"] {
            assert!(
                !text.contains(marker),
                "{marker} in {}: {text}",
                r.record.event_type
            );
        }
    }
    // The read model agrees with the ledger.
    let last = records.last().expect("records").record.position;
    let (status, view) = s
        .call(
            "acme",
            "GET",
            &format!("/v1/sessions/{id}?min_position={last}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["status"], "closed");
    assert_eq!(view["workspace_destroyed"], true);
    assert_eq!(view["execs"], 12, "{view}");
    let (_, list) = s
        .call("acme", "GET", "/v1/sessions?status=closed", None)
        .await;
    assert!(
        list["sessions"]
            .as_array()
            .expect("list")
            .iter()
            .any(|x| x["session_id"] == id.as_str()),
        "{list}"
    );
    let (_, other) = s.call("globex", "GET", "/v1/sessions", None).await;
    assert_eq!(
        other["sessions"].as_array().map(Vec::len),
        Some(0),
        "{other}"
    );
    // The whole ledger still verifies.
    let verified = s.store.verify(None, &[], None, None).await.expect("verify");
    assert!(verified.is_ok(), "{verified:?}");

    h.stop.cancel();
    let _ = h.task.await;
    s.stop().await;
}

#[tokio::test]
async fn sessions_expire_are_lost_with_their_runner_and_the_hot_state_is_rebuilt() {
    let s = stack(SecretProvider::None).await;
    let h = host(&s, false).await;

    // Idle past its timeout: expired by the reaper, its workspace scrubbed.
    let (status, opened) = s
        .open(
            "acme",
            json!({"language": "bash", "limits": {"idle_timeout_secs": 2}}),
        )
        .await;
    assert_eq!(status, 201, "{opened}");
    let idle = opened["session"]["session_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let (_, r) = s
        .exec("acme", &idle, json!({"command": "echo hi > f"}))
        .await;
    assert_eq!(r["outcome"], "succeeded", "{r}");
    let records = s.wait_for(&idle, "workspace.destroyed").await;
    let t = types(&records);
    assert!(t.contains(&"session.expired".to_owned()), "{t:?}");
    let destroyed = records
        .iter()
        .find(|r| r.record.event_type == "workspace.destroyed")
        .expect("destroyed");
    assert_eq!(
        destroyed.record.data["complete"], true,
        "{:?}",
        destroyed.record.data
    );

    // Past its maximum lifetime, however busy: expired too, nothing left.
    let (status, opened) = s
        .open(
            "acme",
            json!({"language": "python", "limits": {"max_lifetime_secs": 3}}),
        )
        .await;
    assert_eq!(status, 201, "{opened}");
    let short = opened["session"]["session_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let (_, r) = s
        .exec(
            "acme",
            &short,
            json!({"code": "import time\ntime.sleep(1)"}),
        )
        .await;
    assert_eq!(r["outcome"], "succeeded", "{r}");
    let records = s.wait_for(&short, "workspace.destroyed").await;
    let expired = records
        .iter()
        .find(|r| r.record.event_type == "session.expired")
        .expect("expired");
    assert!(
        expired.record.data["reason"]
            .as_str()
            .unwrap_or("")
            .contains("lifetime"),
        "{:?}",
        expired.record.data
    );
    // No sandbox process, bundle or workspace of this runner is left.
    let prefix = format!("gb-{}-", h.runner_id);
    assert!(
        processes_with(&prefix).is_empty(),
        "{:?}",
        processes_with(&prefix)
    );
    assert!(owned(&prefix).is_empty(), "{:?}", owned(&prefix));

    // Redis forgets everything: the reaper rebuilds the hot state from the
    // read model.
    let (_, live) = s.open("acme", json!({"language": "python"})).await;
    let live_id = live["session"]["session_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let hot = HotState::connect(
        "redis://127.0.0.1:6379",
        &glassbox_platform::hot::namespace(&s.db.url),
    )
    .await
    .expect("redis");
    let pos = live["position"].as_u64().expect("position");
    // (the read model must hold the session before the state is rebuilt from it)
    let (status, _) = s
        .call(
            "acme",
            "GET",
            &format!("/v1/sessions/{live_id}?min_position={pos}"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    hot.forget_everything().await.expect("flush");
    let mut rebuilt = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if hot.session(&live_id).await.expect("redis").is_some() {
            rebuilt = true;
            break;
        }
    }
    assert!(rebuilt, "the hot state was not rebuilt");
    let (_, r) = s
        .exec("acme", &live_id, json!({"code": "print(6 * 7)"}))
        .await;
    assert_eq!(r["stdout"]["content"], "42\n", "{r}");

    // The runner goes away: its sessions are recorded lost.
    h.stop.cancel();
    let _ = h.task.await;
    let t = types(&s.wait_for(&live_id, "session.lost").await);
    assert!(!t.contains(&"session.closed".to_owned()), "{t:?}");
    let (status, _) = s.exec("acme", &live_id, json!({"code": "print(1)"})).await;
    assert_eq!(status, 409);
    // No runner beats now: a new session cannot be placed (503, try again).
    tokio::time::sleep(glassbox_sandbox_runner::sessions::HEARTBEAT_TTL).await;
    let (status, refused) = s.open("acme", json!({"language": "python"})).await;
    assert_eq!(status, 503, "{refused}");
    assert!(
        refused["detail"]
            .as_str()
            .unwrap_or("")
            .contains("no runner"),
        "{refused}"
    );
    s.stop().await;
}

#[tokio::test]
async fn the_data_plane_refuses_calls_without_a_token_bound_to_it_and_records_them() {
    use glassbox_runner_api::RunnerClient;
    use glassbox_runner_api::v1 as api;
    let s = stack(SecretProvider::None).await;
    let h = host(&s, false).await;
    let (_, opened) = s.open("acme", json!({"language": "python"})).await;
    let id = opened["session"]["session_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let mut c = RunnerClient::connect(h.addr.clone())
        .await
        .expect("connect");
    let key = RunnerTokenKey::load(&s.data_dir.join("runner-token.key")).expect("key");
    let exec = |token: Option<String>| {
        let mut r = tonic::Request::new(api::ExecRequest {
            session_id: id.clone(),
            source: Some(api::exec_request::Source::Code("print('owned')".into())),
            stdin: Vec::new(),
            timeout_ms: 1000,
        });
        if let Some(t) = token {
            r.metadata_mut().insert(
                "authorization",
                format!("Bearer {t}").parse().expect("header"),
            );
        }
        r
    };
    let refused = |e: tonic::Status| e.code();
    // No token.
    let e = c.exec(exec(None)).await.map(|_| ()).expect_err("refused");
    assert_eq!(refused(e), tonic::Code::Unauthenticated);
    // A token for another runner.
    let other = key
        .mint(
            "someone_else",
            &Subject::Session(id.clone()),
            Duration::from_secs(60),
        )
        .expect("mint");
    let e = c
        .exec(exec(Some(other)))
        .await
        .map(|_| ())
        .expect_err("refused");
    assert_eq!(refused(e), tonic::Code::PermissionDenied);
    // A token for another session on this runner.
    let wrong = key
        .mint(
            &h.runner_id,
            &Subject::Session(uuid::Uuid::new_v4().to_string()),
            Duration::from_secs(60),
        )
        .expect("mint");
    let e = c
        .exec(exec(Some(wrong)))
        .await
        .map(|_| ())
        .expect_err("refused");
    assert_eq!(refused(e), tonic::Code::PermissionDenied);
    // A token signed by another key.
    let forged = RunnerTokenKey::generate()
        .expect("key")
        .mint(
            &h.runner_id,
            &Subject::Session(id.clone()),
            Duration::from_secs(60),
        )
        .expect("mint");
    let e = c
        .exec(exec(Some(forged)))
        .await
        .map(|_| ())
        .expect_err("refused");
    assert_eq!(refused(e), tonic::Code::PermissionDenied);
    // Each refusal is on the runner's stream; nothing ran.
    let runner_stream = s
        .store
        .read_stream(&format!("runner-{}", h.runner_id), 1, 100)
        .await
        .expect("stream");
    let refusals = runner_stream
        .iter()
        .filter(|r| r.record.event_type == "access.refused")
        .count();
    assert_eq!(refusals, 4, "{:?}", types(&runner_stream));
    assert!(!types(&s.session_stream(&id).await).contains(&"session.exec_started".to_owned()));
    // The right token works.
    let good = key
        .mint(
            &h.runner_id,
            &Subject::Session(id.clone()),
            Duration::from_secs(60),
        )
        .expect("mint");
    let mut stream = c.exec(exec(Some(good))).await.expect("exec").into_inner();
    let mut saw = Vec::new();
    while let Some(e) = stream.message().await.expect("event") {
        if let Some(api::exec_event::Event::Output(o)) = e.event {
            saw.extend(o.data);
        }
    }
    assert_eq!(String::from_utf8_lossy(&saw), "owned\n");
    h.stop.cancel();
    let _ = h.task.await;
    s.stop().await;
}

#[tokio::test]
async fn the_data_plane_bypass_lets_calls_through_and_records_each() {
    use glassbox_runner_api::RunnerClient;
    use glassbox_runner_api::v1 as api;
    let s = stack(SecretProvider::None).await;
    let h = host(&s, true).await;
    let (_, opened) = s.open("acme", json!({"language": "bash"})).await;
    let id = opened["session"]["session_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let mut c = RunnerClient::connect(h.addr.clone())
        .await
        .expect("connect");
    let r = c
        .list_files(api::ListFilesRequest {
            session_id: id.clone(),
            path: String::new(),
        })
        .await;
    assert!(r.is_ok(), "{r:?}");
    let auth = s
        .store
        .read_stream("auth-system", 1, 100)
        .await
        .expect("auth");
    let bypassed: Vec<_> = auth
        .iter()
        .filter(|r| r.record.event_type == "auth.bypassed" && r.record.data["plane"] == "data")
        .collect();
    assert_eq!(bypassed.len(), 1, "{:?}", types(&auth));
    h.stop.cancel();
    let _ = h.task.await;
    s.stop().await;
}

#[tokio::test]
async fn a_memory_bomb_ends_its_own_session_and_no_other() {
    let s = stack(SecretProvider::None).await;
    let h = host(&s, false).await;
    let (_, a) = s
        .open(
            "acme",
            json!({"language": "python", "limits": {"memory_bytes": 134217728}}),
        )
        .await;
    let bomb = a["session"]["session_id"].as_str().expect("id").to_owned();
    let (_, b) = s.open("acme", json!({"language": "python"})).await;
    let calm = b["session"]["session_id"].as_str().expect("id").to_owned();
    let (_, r) = s
        .exec("acme", &calm, json!({"code": "kept = 'still here'"}))
        .await;
    assert_eq!(r["outcome"], "succeeded", "{r}");
    let (_, r) = s
        .exec(
            "acme",
            &bomb,
            json!({"code": "hog = []\nwhile True:\n    hog.append(bytearray(16 << 20))", "timeout_ms": 20000}),
        )
        .await;
    assert_ne!(r["outcome"], "succeeded", "{r}");
    let t = types(&s.wait_for(&bomb, "session.lost").await);
    assert!(t.contains(&"session.exec_finished".to_owned()), "{t:?}");
    let (status, _) = s.exec("acme", &bomb, json!({"code": "print(1)"})).await;
    assert_eq!(status, 409);
    // The other session kept its sandbox and its state.
    let (_, r) = s.exec("acme", &calm, json!({"code": "print(kept)"})).await;
    assert_eq!(r["stdout"]["content"], "still here\n", "{r}");
    h.stop.cancel();
    let _ = h.task.await;
    s.stop().await;
}

/// Command lines of the processes whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(cmd) = std::fs::read(p.path().join("cmdline"))
            && String::from_utf8_lossy(&cmd).contains(needle)
        {
            found.push(String::from_utf8_lossy(&cmd).replace('\0', " "));
        }
    }
    found
}

/// The bundles and workspaces under the test sandbox directory whose
/// sandbox ID starts with `prefix`.
fn owned(prefix: &str) -> Vec<String> {
    ["bundles", "ws"]
        .iter()
        .flat_map(|d| {
            std::fs::read_dir(std::path::Path::new("/run/glassbox-test").join(d))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `glassbox runner` as its own process, on the stack's database and data
/// directory (its token key, key-encryption key and blobs).
fn runner_process(s: &Stack, id: &str) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_glassbox-e2e-cli"))
        .arg("runner")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GLASSBOX_ENV", "test")
        .env("GLASSBOX_DATABASE_URL", &s.db.url)
        .env("GLASSBOX_DATA_DIR", &s.data_dir)
        .env("GLASSBOX_RUNNER_ID", id)
        .env("GLASSBOX_RUNNER_SLOTS", "1")
        .env("GLASSBOX_SANDBOX_DIR", "/run/glassbox-test")
        .stdout(std::process::Stdio::null())
        .stderr(
            std::fs::File::create(s.data_dir.join(format!("{id}.log")))
                .map(std::process::Stdio::from)
                .unwrap_or_else(|_| std::process::Stdio::null()),
        )
        .spawn()
        .expect("glassbox runner")
}

#[tokio::test]
async fn a_runner_killed_with_sigkill_loses_its_sessions_and_its_restart_leaves_no_orphan() {
    let s = stack(SecretProvider::None).await;
    let hot = HotState::connect(
        "redis://127.0.0.1:6379",
        &glassbox_platform::hot::namespace(&s.db.url),
    )
    .await
    .expect("redis");
    let id = format!("kill{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut runner = runner_process(&s, &id);
    let mut up = false;
    for _ in 0..300 {
        if hot.runner(&id).await.expect("redis").is_some() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = || std::fs::read_to_string(s.data_dir.join(format!("{id}.log"))).unwrap_or_default();
    assert!(up, "the runner never beat: {}", log());

    let (status, opened) = s.open("acme", json!({"language": "python"})).await;
    assert_eq!(status, 201, "{opened} {}", log());
    assert_eq!(opened["session"]["runner"], id.as_str());
    let sid = opened["session"]["session_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let (_, r) = s.exec("acme", &sid, json!({"code": "x = 1"})).await;
    assert_eq!(r["outcome"], "succeeded", "{r}");
    let prefix = format!("gb-{id}-");
    assert!(!processes_with(&prefix).is_empty(), "no sandbox process");
    assert!(
        !owned(&prefix).is_empty(),
        "no bundle or workspace of the session"
    );

    runner.kill().expect("SIGKILL");
    let _ = runner.wait();
    // The sandbox dies with its runner.
    let mut gone = false;
    for _ in 0..50 {
        if processes_with(&prefix).is_empty() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        gone,
        "sandbox outlived its runner: {:?}",
        processes_with(&prefix)
    );
    // A call meanwhile gets a clear error, not a hang.
    let (status, r) = s.exec("acme", &sid, json!({"code": "x"})).await;
    assert!(status == 503 || status == 409, "{status} {r}");
    assert!(r["detail"].as_str().is_some_and(|d| !d.is_empty()), "{r}");
    // Its heartbeat lapses: the reaper records the session lost.
    let records = s.wait_for(&sid, "session.lost").await;
    let lost = records
        .iter()
        .find(|r| r.record.event_type == "session.lost")
        .expect("lost");
    assert!(
        lost.record.data["reason"]
            .as_str()
            .unwrap_or("")
            .contains(&id),
        "{:?}",
        lost.record.data
    );
    let (status, r) = s.exec("acme", &sid, json!({"code": "x"})).await;
    assert_eq!(status, 409, "{r}");
    assert!(r["detail"].as_str().unwrap_or("").contains("lost"), "{r}");

    // Restarted, the runner sweeps what the killed one left; nothing of the
    // session remains.
    let mut again = runner_process(&s, &id);
    let runner_stream = format!("runner-{id}");
    let mut swept = Vec::new();
    for _ in 0..300 {
        swept = s
            .store
            .read_stream(&runner_stream, 1, 100)
            .await
            .unwrap_or_default();
        if swept
            .iter()
            .any(|r| r.record.event_type == "runner.sweep_finished")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sweep = swept
        .iter()
        .find(|r| r.record.event_type == "runner.sweep_finished")
        .unwrap_or_else(|| panic!("no sweep recorded: {}", log()));
    assert!(
        sweep.record.data["workspaces"].as_u64().unwrap_or(0) >= 1,
        "{:?}",
        sweep.record.data
    );
    assert_eq!(sweep.record.data["failures"], json!([]));
    assert!(processes_with(&prefix).is_empty());
    assert!(owned(&prefix).is_empty(), "{:?}", owned(&prefix));
    let _ = again.kill();
    let _ = again.wait();
    s.stop().await;
}

#[tokio::test]
async fn approved_secrets_reach_a_session_redacted_and_counted_and_file_deletes_are_events() {
    let dir = std::env::temp_dir().join(format!(
        "glassbox-e2e-session-secrets-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("secrets.json");
    let value = "sk-session-5e8d2c1a9f";
    std::fs::write(
        &file,
        json!({"OPENAI_API_KEY": value, "DATABASE_PASSWORD": "pw-session-0077"}).to_string(),
    )
    .expect("secrets file");
    let s = stack(SecretProvider::None).await;
    let h = host_with(&s, false, SecretProvider::File(file), None).await;
    // A secret the tenant may not have: refused, recorded, nothing opened.
    let (status, refused) = s
        .open(
            "acme",
            json!({"language": "python", "secrets": ["AWS_SECRET"]}),
        )
        .await;
    assert_eq!(status, 403, "{refused}");
    let (status, opened) = s
        .open(
            "acme",
            json!({"language": "python",
                   "secrets": ["OPENAI_API_KEY", {"name": "DATABASE_PASSWORD", "mode": "file"}]}),
        )
        .await;
    assert_eq!(status, 201, "{opened}");
    let id = opened["session"]["session_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let (_, r) = s
        .exec(
            "acme",
            &id,
            json!({"code": "import os\nk = os.environ['OPENAI_API_KEY']\nprint('key', k, k)\nprint(open('.secrets/DATABASE_PASSWORD').read())\nopen('leak.txt', 'w').write(k)"}),
        )
        .await;
    assert_eq!(r["outcome"], "succeeded", "{r}");
    let out = r["stdout"]["content"].as_str().unwrap_or("");
    assert!(
        !out.contains(value) && !out.contains("pw-session-0077"),
        "{out}"
    );
    assert!(out.contains("[REDACTED"), "{out}");
    assert!(r["redactions"].as_u64().unwrap_or(0) >= 3, "{r}");
    // Read back through the API: redacted too.
    let got = s
        .client
        .get(format!("{}/v1/sessions/{id}/files/leak.txt", s.addr))
        .bearer_auth(token("acme"))
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("body");
    assert!(!got.contains(value), "{got}");
    // A file deleted through the API is gone, and the deletion is an event.
    let (status, _) = s
        .call(
            "acme",
            "DELETE",
            &format!("/v1/sessions/{id}/files/leak.txt"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (_, r) = s
        .exec(
            "acme",
            &id,
            json!({"code": "import os\nprint(os.path.exists('leak.txt'))"}),
        )
        .await;
    assert_eq!(r["stdout"]["content"], "False\n", "{r}");
    let (status, _) = s
        .call("acme", "DELETE", &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!(status, 200);
    let records = s.wait_for(&id, "workspace.destroyed").await;
    let t = types(&records);
    for e in [
        "secret.injection_approved",
        "secret.materialized",
        "session.file_deleted",
    ] {
        assert!(t.iter().any(|x| x == e), "{e} missing from {t:?}");
    }
    // No secret value anywhere in the session's records or the read model.
    for r in &records {
        let text = Value::Object(r.record.data.clone()).to_string();
        assert!(
            !text.contains(value) && !text.contains("pw-session-0077"),
            "{text}"
        );
    }
    let (_, view) = s
        .call("acme", "GET", &format!("/v1/sessions/{id}"), None)
        .await;
    assert!(!view.to_string().contains(value));
    h.stop.cancel();
    let _ = h.task.await;
    let _ = std::fs::remove_dir_all(&dir);
    s.stop().await;
}
