//! Configuration, JWT verification (every refusal case), problem+json and health,
//! against real keys, a real JWKS endpoint on loopback and the real PostgreSQL.

use axum::response::IntoResponse;
use base64::Engine as _;
use glassbox_platform::auth::{AuthError, JwtVerifier};
use glassbox_platform::config::{Config, Environment};
use glassbox_platform::problem::Problem;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

struct Keys {
    ec_pkcs8: Vec<u8>,
    jwks_path: PathBuf,
}

/// A JWKS file with rsa1 and a fresh ES256 key `ec1`.
fn keys() -> Keys {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("ec key");
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .expect("pair");
    let public = pair.public_key().as_ref();
    let ec = json!({"kty": "EC", "crv": "P-256", "kid": "ec1", "alg": "ES256", "use": "sig",
                    "x": b64(&public[1..33]), "y": b64(&public[33..65])});
    let rsa1: Value =
        serde_json::from_slice(&std::fs::read(fixture("rsa1.jwk.json")).expect("jwk"))
            .expect("json");
    let path = std::env::temp_dir().join(format!("gb-jwks-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(&path, json!({"keys": [rsa1, ec]}).to_string()).expect("write jwks");
    Keys {
        ec_pkcs8: pkcs8.as_ref().to_vec(),
        jwks_path: path,
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

fn claims() -> Value {
    json!({"iss": "glassbox", "aud": "glassbox", "sub": "user-1", "tenant": "acme",
           "roles": ["submitter"], "app": "notebook", "exp": now() + 300, "iat": now()})
}

fn rs256(kid: &str, pem: &str, claims: &Value) -> String {
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some(kid.to_owned());
    let key =
        EncodingKey::from_rsa_pem(&std::fs::read(fixture(pem)).expect("pem")).expect("rsa key");
    jsonwebtoken::encode(&h, claims, &key).expect("encode")
}

async fn verifier(extra: &[(&str, &str)], jwks: &Path) -> JwtVerifier {
    let mut v = vars(&[("GLASSBOX_AUTH_JWKS_FILE", jwks.to_str().expect("path"))]);
    v.extend(vars(extra));
    let cfg = Config::from_vars(v).expect("config");
    JwtVerifier::new(&cfg.auth).await.expect("verifier")
}

#[tokio::test]
async fn valid_rs256_and_es256_tokens_give_the_identity() {
    let k = keys();
    let v = verifier(&[], &k.jwks_path).await;
    let id = v
        .verify(&rs256("rsa1", "rsa1.pem", &claims()))
        .await
        .expect("rs256");
    assert_eq!(
        (id.tenant.as_str(), id.subject.as_str()),
        ("acme", "user-1")
    );
    assert_eq!(id.roles, vec!["submitter"]);
    assert_eq!(id.app.as_deref(), Some("notebook"));
    assert_eq!(id.agent, None);

    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("ec1".into());
    let token =
        jsonwebtoken::encode(&h, &claims(), &EncodingKey::from_ec_der(&k.ec_pkcs8)).expect("es256");
    assert_eq!(v.verify(&token).await.expect("es256").tenant, "acme");

    // Configurable claim names.
    let v2 = verifier(
        &[
            ("GLASSBOX_AUTH_TENANT_CLAIM", "org"),
            ("GLASSBOX_AUTH_ROLES_CLAIM", "scope"),
        ],
        &k.jwks_path,
    )
    .await;
    let mut c = claims();
    c["org"] = json!("globex");
    c["scope"] = json!("reader auditor");
    let id = v2
        .verify(&rs256("rsa1", "rsa1.pem", &c))
        .await
        .expect("custom claims");
    assert_eq!(id.tenant, "globex");
    assert_eq!(id.roles, vec!["reader", "auditor"]);
}

#[tokio::test]
async fn every_bad_token_is_refused_with_its_reason() {
    let k = keys();
    let v = verifier(&[], &k.jwks_path).await;
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims();
        f(&mut c);
        c
    };
    let cases: Vec<(&str, String, AuthError)> = vec![
        (
            "expired",
            rs256(
                "rsa1",
                "rsa1.pem",
                &with(&|c| c["exp"] = json!(now() - 3600)),
            ),
            AuthError::Expired,
        ),
        (
            "not yet valid",
            rs256(
                "rsa1",
                "rsa1.pem",
                &with(&|c| c["nbf"] = json!(now() + 3600)),
            ),
            AuthError::NotYetValid,
        ),
        (
            "wrong issuer",
            rs256("rsa1", "rsa1.pem", &with(&|c| c["iss"] = json!("evil"))),
            AuthError::Issuer,
        ),
        (
            "wrong audience",
            rs256("rsa1", "rsa1.pem", &with(&|c| c["aud"] = json!("other"))),
            AuthError::Audience,
        ),
        (
            "unknown key",
            rs256("rsa_unknown", "rsa_unknown.pem", &claims()),
            AuthError::UnknownKey("rsa_unknown".into()),
        ),
        (
            "key id of another key",
            rs256("rsa1", "rsa_unknown.pem", &claims()),
            AuthError::Signature,
        ),
        (
            "missing tenant",
            rs256(
                "rsa1",
                "rsa1.pem",
                &with(&|c| {
                    c.as_object_mut().expect("obj").remove("tenant");
                }),
            ),
            AuthError::MissingClaim("tenant".into()),
        ),
        (
            "missing exp",
            rs256(
                "rsa1",
                "rsa1.pem",
                &with(&|c| {
                    c.as_object_mut().expect("obj").remove("exp");
                }),
            ),
            AuthError::MissingClaim("exp".into()),
        ),
    ];
    for (name, token, want) in cases {
        assert_eq!(v.verify(&token).await, Err(want), "{name}");
    }
    // alg: none, with and without a signature.
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims().to_string().as_bytes())
    );
    assert!(matches!(
        v.verify(&none).await,
        Err(AuthError::Algorithm(_))
    ));
    let none_upper = format!(
        "{}.{}.",
        b64(br#"{"alg":"NONE"}"#),
        b64(claims().to_string().as_bytes())
    );
    assert!(matches!(
        v.verify(&none_upper).await,
        Err(AuthError::Algorithm(_))
    ));
    // RS256/HS256 confusion: an HS256 token keyed with the RSA public key.
    let pubkey = std::fs::read(fixture("rsa1.pub.pem")).expect("pub");
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("rsa1".into());
    let confused =
        jsonwebtoken::encode(&h, &claims(), &EncodingKey::from_secret(&pubkey)).expect("hs");
    assert_eq!(
        v.verify(&confused).await,
        Err(AuthError::Algorithm("HS256".into()))
    );
    // …and even where HS256 is allowed (test environment), the RSA key is never the secret.
    let hs = verifier(
        &[
            ("GLASSBOX_ENV", "test"),
            (
                "GLASSBOX_AUTH_HS256_SECRET",
                "0123456789abcdef0123456789abcdef",
            ),
        ],
        &k.jwks_path,
    )
    .await;
    assert_eq!(hs.verify(&confused).await, Err(AuthError::Signature));
    let mut h = Header::new(Algorithm::HS256);
    h.kid = None;
    let good_hs = jsonwebtoken::encode(
        &h,
        &claims(),
        &EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
    )
    .expect("hs");
    assert_eq!(hs.verify(&good_hs).await.expect("dev HS256").tenant, "acme");
    // A tampered payload and garbage.
    let good = rs256("rsa1", "rsa1.pem", &claims());
    let mut parts: Vec<&str> = good.split('.').collect();
    let forged_claims = b64(with(&|c| c["tenant"] = json!("globex"))
        .to_string()
        .as_bytes());
    parts[1] = &forged_claims;
    assert_eq!(v.verify(&parts.join(".")).await, Err(AuthError::Signature));
    assert!(matches!(
        v.verify("not-a-token").await,
        Err(AuthError::Malformed(_))
    ));
    assert!(matches!(v.verify("").await, Err(AuthError::Malformed(_))));
}

#[tokio::test]
async fn rotated_keys_are_fetched_from_the_jwks_url_on_an_unknown_kid() {
    let jwk = |name: &str| -> Value {
        serde_json::from_slice(&std::fs::read(fixture(name)).expect("jwk")).expect("json")
    };
    let served = Arc::new(Mutex::new(json!({"keys": [jwk("rsa1.jwk.json")]})));
    let fetches = Arc::new(Mutex::new(0u32));
    let app = {
        let (served, fetches) = (served.clone(), fetches.clone());
        axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let (served, fetches) = (served.clone(), fetches.clone());
                async move {
                    *fetches.lock().expect("lock") += 1;
                    axum::Json(served.lock().expect("lock").clone())
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    let url = format!("http://{addr}/jwks.json");
    let cfg = Config::from_vars(vars(&[
        ("GLASSBOX_ENV", "test"),
        ("GLASSBOX_AUTH_JWKS_URL", &url),
        ("GLASSBOX_AUTH_JWKS_MIN_REFRESH_SECS", "0"),
    ]))
    .expect("config");
    let v = JwtVerifier::new(&cfg.auth).await.expect("verifier");
    assert!(
        v.verify(&rs256("rsa1", "rsa1.pem", &claims()))
            .await
            .is_ok()
    );
    assert_eq!(*fetches.lock().expect("lock"), 1, "cached");
    // Rotate: the issuer now signs with rsa2 and publishes it.
    *served.lock().expect("lock") = json!({"keys": [jwk("rsa2.jwk.json")]});
    assert_eq!(
        v.verify(&rs256("rsa2", "rsa2.pem", &claims()))
            .await
            .expect("rotated")
            .tenant,
        "acme"
    );
    assert_eq!(*fetches.lock().expect("lock"), 2);
    // The retired key is gone after the refresh.
    assert!(matches!(
        v.verify(&rs256("rsa1", "rsa1.pem", &claims())).await,
        Err(AuthError::UnknownKey(_))
    ));
    // Refreshes are rate-limited.
    let cfg = Config::from_vars(vars(&[
        ("GLASSBOX_ENV", "test"),
        ("GLASSBOX_AUTH_JWKS_URL", &url),
    ]))
    .expect("config");
    let v = JwtVerifier::new(&cfg.auth).await.expect("verifier");
    let before = *fetches.lock().expect("lock");
    for _ in 0..5 {
        let _ = v
            .verify(&rs256("rsa_unknown", "rsa_unknown.pem", &claims()))
            .await;
    }
    assert_eq!(
        *fetches.lock().expect("lock"),
        before,
        "unknown kids do not hammer the JWKS endpoint"
    );
}

#[test]
fn configuration_names_the_bad_variable_and_fails_closed() {
    let jwks = fixture("rsa1.jwk.json");
    let base = [("GLASSBOX_AUTH_JWKS_FILE", jwks.to_str().expect("p"))];
    let cfg = Config::from_vars(vars(&base)).expect("defaults");
    assert_eq!(cfg.environment, Environment::Production);
    assert_eq!(cfg.http_addr.to_string(), "127.0.0.1:8080");
    assert!(!cfg.auth.bypass);

    let err = |extra: &[(&str, &str)]| {
        let mut v = vars(&base);
        v.extend(vars(extra));
        Config::from_vars(v).expect_err("refused")
    };
    let e = err(&[("GLASSBOX_HTTP_ADDR", "not-an-address")]);
    assert_eq!(e.var, "GLASSBOX_HTTP_ADDR");
    assert!(e.to_string().contains("not-an-address"), "{e}");
    assert_eq!(err(&[("GLASSBOX_ENV", "staging")]).var, "GLASSBOX_ENV");
    assert_eq!(
        err(&[("GLASSBOX_MAX_BODY_BYTES", "-5")]).var,
        "GLASSBOX_MAX_BODY_BYTES"
    );
    let e = err(&[("GLASSBOX_AUTH_BYPASS", "true")]);
    assert_eq!(e.var, "GLASSBOX_AUTH_BYPASS");
    assert!(e.reason.contains("production"), "{e}");
    let e = err(&[(
        "GLASSBOX_AUTH_HS256_SECRET",
        "0123456789abcdef0123456789abcdef",
    )]);
    assert!(
        !e.to_string().contains("0123456789abcdef"),
        "secret echoed: {e}"
    );
    let e = err(&[("DATABASE_URL", "mysql://root:hunter2@db/x")]);
    assert!(!e.to_string().contains("hunter2"), "secret echoed: {e}");
    let e = err(&[("GLASSBOX_AUTH_JWKS_URL", "http://keys.example.com/jwks")]);
    assert_eq!(
        e.var, "GLASSBOX_AUTH_JWKS_URL",
        "plain http only outside production"
    );
    // No key source at all: a configuration (the runner takes no tokens), but
    // no token verifier can be built from it.
    let bare = Config::from_vars(vars(&[])).expect("no key source is a valid configuration");
    let refused = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(JwtVerifier::new(&bare.auth));
    match refused {
        Ok(_) => panic!("a verifier without keys was built"),
        Err(e) => assert_eq!(e.var, "GLASSBOX_AUTH_JWKS_FILE"),
    }

    let ok = |extra: &[(&str, &str)]| {
        let mut v = vars(&base);
        v.extend(vars(extra));
        Config::from_vars(v).expect("accepted")
    };
    assert!(
        ok(&[("GLASSBOX_ENV", "test"), ("GLASSBOX_AUTH_BYPASS", "true")])
            .auth
            .bypass
    );
    assert_eq!(
        ok(&[("DATABASE_URL", "postgres://u@h/db")])
            .database_url
            .as_deref(),
        Some("postgres://u@h/db")
    );

    // A file, overridden by the environment; unknown file keys are refused.
    let file = std::env::temp_dir().join(format!("gb-config-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(
        &file,
        "http_addr = \"0.0.0.0:9000\"\nmax_body_bytes = 4096\nenv = \"development\"\n",
    )
    .expect("write");
    let cfg = ok(&[
        ("GLASSBOX_CONFIG_FILE", file.to_str().expect("p")),
        ("GLASSBOX_MAX_BODY_BYTES", "2048"),
    ]);
    assert_eq!(cfg.http_addr.to_string(), "0.0.0.0:9000");
    assert_eq!(cfg.max_body_bytes, 2048);
    assert_eq!(cfg.environment, Environment::Development);
    std::fs::write(&file, "htp_addr = \"x\"\n").expect("write");
    let e = err(&[("GLASSBOX_CONFIG_FILE", file.to_str().expect("p"))]);
    assert!(e.to_string().contains("unknown setting `htp_addr`"), "{e}");
    let _ = std::fs::remove_file(&file);
}

#[tokio::test]
async fn problems_are_problem_json_with_stable_codes() {
    let p = Problem::unauthenticated("token has expired").with("reasons", json!(["x"]));
    let resp = p.into_response();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["code"], "unauthenticated");
    assert_eq!(v["status"], 401);
    assert_eq!(v["detail"], "token has expired");
    assert_eq!(v["reasons"], json!(["x"]));
    assert!(v["type"].as_str().expect("type").starts_with("https://"));
    let v = serde_json::to_value(Problem::internal()).expect("json");
    assert!(v.get("detail").is_none(), "internal errors carry no detail");
}

#[tokio::test]
async fn readiness_checks_the_database() {
    let db = glassbox_events::testing::TestDb::new()
        .await
        .expect("test db");
    let call = |router: axum::Router, path: &'static str| async move {
        use tower::ServiceExt as _;
        let resp = router
            .oneshot(
                axum::http::Request::get(path)
                    .body(axum::body::Body::empty())
                    .expect("request"),
            )
            .await
            .expect("response");
        (
            resp.status().as_u16(),
            resp.headers().get("content-type").cloned(),
        )
    };
    let up = glassbox_platform::health::router(db.pool.clone());
    assert_eq!(call(up.clone(), "/healthz").await.0, 200);
    assert_eq!(call(up, "/readyz").await.0, 200);
    let dead = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(std::time::Duration::from_millis(500))
        .connect_lazy("postgres://postgres@127.0.0.1:1/none")
        .expect("lazy pool");
    let down = glassbox_platform::health::router(dead);
    assert_eq!(call(down.clone(), "/healthz").await.0, 200);
    let (status, ct) = call(down, "/readyz").await;
    assert_eq!(status, 503);
    assert_eq!(ct.expect("content type"), "application/problem+json");
    db.drop_db().await;
}

mod blobs {
    use glassbox_platform::blob::{Backend, BlobError, BlobStore, Kek};
    use std::path::PathBuf;

    fn kek() -> Kek {
        let path = std::env::temp_dir().join(format!("gb-kek-{}/kek.key", uuid::Uuid::new_v4()));
        let k = Kek::load_or_generate(&path).expect("generate kek");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = Kek::load_or_generate(&path).expect("load kek");
        assert_eq!(again.id(), k.id());
        k
    }

    /// Round trip, tamper, move and shred — the same for every backend.
    async fn exercise(store: &BlobStore, inspect_dir: Option<&PathBuf>) {
        let job = format!("job-{}", uuid::Uuid::new_v4());
        store.create_data_key(&job, "acme").await.expect("data key");
        store
            .create_data_key(&job, "acme")
            .await
            .expect("idempotent");
        let secret = b"print('the plaintext that must not appear at rest')".to_vec();
        let path = format!("acme/{job}/code");
        let blob = store.put(&job, &path, &secret).await.expect("put");
        assert_eq!(blob.size_bytes, secret.len() as u64);
        // The digest is keyed: not the plain SHA-256 (which would confirm a
        // guess of the content), the data key's HMAC, different under another key.
        assert_ne!(blob.hmac, glassbox_events::Digest::of(&secret));
        assert_eq!(
            store.keyed_digest(&job, &secret).await.expect("digest"),
            blob.hmac
        );
        let other = format!("job-{}", uuid::Uuid::new_v4());
        store.create_data_key(&other, "acme").await.expect("key");
        assert_ne!(
            store.keyed_digest(&other, &secret).await.expect("digest"),
            blob.hmac
        );
        assert!(
            store
                .destroy_key(&other)
                .await
                .expect("destroy the other key")
        );
        assert_eq!(store.get(&job, &path).await.expect("get"), secret);
        assert_eq!(
            store
                .get_checked(&job, &path, &blob.hmac)
                .await
                .expect("checked"),
            secret
        );
        assert!(matches!(
            store
                .get_checked(&job, &path, &glassbox_events::Digest::of(&secret))
                .await,
            Err(BlobError::DigestMismatch { .. })
        ));
        // Fresh names never come from the content or the caller.
        let a = store
            .put_new(&job, &format!("acme/{job}/out"), b"one")
            .await
            .expect("new");
        let b = store
            .put_new(&job, &format!("acme/{job}/out"), b"one")
            .await
            .expect("new");
        assert_ne!(a.key, b.key);
        assert!(a.key.starts_with(&format!("acme/{job}/out/")));
        assert_eq!(a.key.len(), format!("acme/{job}/out/").len() + 32);
        if let Some(dir) = inspect_dir {
            let raw = std::fs::read(dir.join(&path)).expect("object on disk");
            assert!(
                !raw.windows(9).any(|w| w == b"plaintext"),
                "stored encrypted"
            );
            // Flip one byte at rest: authentication fails.
            let mut bad = raw.clone();
            let last = bad.len() - 1;
            bad[last] ^= 1;
            std::fs::write(dir.join(&path), &bad).expect("tamper");
            assert!(matches!(
                store.get(&job, &path).await,
                Err(BlobError::Crypto { .. })
            ));
            // The same bytes under another path do not open either (the AAD binds the path).
            std::fs::create_dir_all(dir.join(format!("acme/{job}/moved"))).expect("dir");
            std::fs::write(dir.join(format!("acme/{job}/moved/code")), &raw).expect("copy");
            assert!(matches!(
                store.get(&job, &format!("acme/{job}/moved/code")).await,
                Err(BlobError::Crypto { .. })
            ));
            std::fs::write(dir.join(&path), &raw).expect("restore");
        }
        assert!(matches!(
            store.get(&job, &format!("acme/{job}/absent")).await,
            Err(BlobError::NotFound { .. })
        ));
        assert!(matches!(
            store.get("no-such-key", &path).await,
            Err(BlobError::UnknownKey { .. })
        ));
        // Crypto-shredding.
        assert!(store.destroy_key(&job).await.expect("destroy"));
        assert!(
            !store.destroy_key(&job).await.expect("again"),
            "second destroy is a no-op"
        );
        match store.get(&job, &path).await {
            Err(BlobError::KeyDestroyed { key_id, .. }) => assert_eq!(key_id, job),
            other => panic!("expected KeyDestroyed, got {other:?}"),
        }
        assert!(matches!(
            store.put(&job, &path, b"x").await,
            Err(BlobError::KeyDestroyed { .. })
        ));
        // After shredding the ciphertext can go too: nothing left under the prefix.
        assert_eq!(
            store
                .delete_prefix(&format!("acme/{job}"))
                .await
                .expect("delete"),
            // code, two outputs, and the moved copy on the local backend
            3 + u64::from(inspect_dir.is_some())
        );
        assert!(matches!(
            store.get(&job, &a.key).await,
            Err(BlobError::KeyDestroyed { .. })
        ));
        assert_eq!(
            store
                .delete_prefix(&format!("acme/{job}"))
                .await
                .expect("again"),
            0
        );
    }

    #[tokio::test]
    async fn local_blobs_are_encrypted_bound_to_their_path_and_shredded_with_their_key() {
        let db = glassbox_events::testing::TestDb::new()
            .await
            .expect("test db");
        let dir = std::env::temp_dir().join(format!("gb-blobs-{}", uuid::Uuid::new_v4()));
        let store =
            BlobStore::new(&Backend::Local(dir.clone()), db.pool.clone(), kek()).expect("store");
        exercise(&store, Some(&dir)).await;
        // The wrapped key row is gone; a different KEK cannot open another job's key.
        let wrapped: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT wrapped FROM blobs.data_keys LIMIT 1")
                .fetch_one(&db.pool)
                .await
                .expect("row");
        assert!(wrapped.is_none());
        store.create_data_key("job-k", "acme").await.expect("key");
        let other =
            BlobStore::new(&Backend::Local(dir.clone()), db.pool.clone(), kek()).expect("store");
        assert!(matches!(
            other.put("job-k", "p", b"x").await,
            Err(BlobError::Crypto {
                step: "unwrap data key",
                ..
            })
        ));
        let _ = std::fs::remove_dir_all(&dir);
        db.drop_db().await;
    }

    /// Against a real S3-compatible server (moto_server, started by scripts/test.sh).
    #[tokio::test]
    async fn s3_blobs_round_trip_and_shred() {
        glassbox_platform::install_crypto_provider();
        let endpoint = std::env::var("GLASSBOX_TEST_S3_ENDPOINT")
            .unwrap_or_else(|_| "http://127.0.0.1:5000".into());
        let bucket = format!(
            "glassbox-test-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let created = reqwest::Client::new()
            .put(format!("{endpoint}/{bucket}"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("S3 server at {endpoint} is not reachable (scripts/test.sh starts moto_server): {e}"));
        assert!(
            created.status().is_success(),
            "create bucket: {}",
            created.status()
        );
        let db = glassbox_events::testing::TestDb::new()
            .await
            .expect("test db");
        let backend = Backend::S3 {
            bucket: bucket.clone(),
            endpoint: Some(endpoint.clone()),
            region: "us-east-1".into(),
            access_key_id: "test".into(),
            secret_access_key: glassbox_platform::config::Secret::new("test"),
            allow_http: true,
        };
        let store = BlobStore::new(&backend, db.pool.clone(), kek()).expect("store");
        exercise(&store, None).await;
        // The object on the server is ciphertext.
        let job = "job-raw";
        store.create_data_key(job, "acme").await.expect("key");
        store
            .put(job, "acme/job-raw/out", b"very visible plaintext")
            .await
            .expect("put");
        use object_store::ObjectStoreExt as _;
        let plain_client = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(&bucket)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .with_endpoint(&endpoint)
            .with_allow_http(true)
            .build()
            .expect("raw client");
        let raw = plain_client
            .get(&object_store::path::Path::from("acme/job-raw/out"))
            .await
            .expect("raw get")
            .bytes()
            .await
            .expect("bytes");
        assert!(raw.starts_with(b"GBX1"));
        assert!(!raw.windows(7).any(|w| w == b"visible"));
        db.drop_db().await;
    }
}
