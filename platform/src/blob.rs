//! The blob store with envelope encryption.
//!
//! Code, stdin, outputs and artifacts never enter the ledger; they live here,
//! each encrypted with AES-256-GCM under its job's *data key*, which is itself
//! stored only wrapped (AES-256-GCM) under the service's *key-encryption key*
//! (KEK, a 0600 file). Destroying a data key nulls its wrapped bytes in
//! PostgreSQL, after which every blob under it is unreadable — crypto-shredding
//! that leaves the ledger's references (digest, size, key) intact and verifiable.
//!
//! Objects are `GBX1 ‖ nonce(12) ‖ ciphertext ‖ tag(16)`; the AAD binds each to
//! its data key and object path, so a blob copied to another path or key fails
//! to open. AES-GCM comes from ring (already the ledger's crypto library).
//! Storage is `object_store`: a local directory by default, S3 when configured.

use glassbox_events::Digest;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use sqlx::{PgPool, Row};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const MAGIC: &[u8; 4] = b"GBX1";

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob {path}: data key {key_id} was destroyed")]
    KeyDestroyed { key_id: String, path: String },
    #[error("blob {path}: data key {key_id} does not exist")]
    UnknownKey { key_id: String, path: String },
    #[error("blob {path}: not found")]
    NotFound { path: String },
    #[error("blob {path}: content does not match the digest recorded for it")]
    DigestMismatch { path: String },
    #[error("{step} {subject}: decryption or authentication failed")]
    Crypto { step: &'static str, subject: String },
    #[error("{step} {path}: storage error: {source}")]
    Store {
        step: &'static str,
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error("{step}: database error: {source}")]
    Database {
        step: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("key-encryption key {path}: {reason}")]
    Kek { path: String, reason: String },
    #[error("blob store configuration: {0}")]
    Config(String),
}

/// The key-encryption key.
pub struct Kek {
    id: String,
    key: LessSafeKey,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kek({})", self.id)
    }
}

impl Kek {
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Kek, BlobError> {
        let key = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| BlobError::Kek {
            path: "-".into(),
            reason: "not an AES-256 key".into(),
        })?;
        Ok(Kek {
            id: Digest::of(bytes).to_hex()[..16].to_owned(),
            key: LessSafeKey::new(key),
        })
    }

    /// Loads the KEK file (hex, mode 0600), creating it on first start.
    pub fn load_or_generate(path: &Path) -> Result<Kek, BlobError> {
        use std::io::Write as _;
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        let err = |reason: String| BlobError::Kek {
            path: path.display().to_string(),
            reason,
        };
        if path.exists() {
            let mode = std::fs::metadata(path)
                .map_err(|e| err(e.to_string()))?
                .permissions()
                .mode()
                & 0o777;
            if mode & 0o077 != 0 {
                return Err(err(format!(
                    "readable by others (mode {mode:o}); it must be 0600"
                )));
            }
            let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
            let mut bytes = [0u8; 32];
            hex::decode_to_slice(text.trim(), &mut bytes)
                .map_err(|_| err("not 64 hex digits".into()))?;
            return Kek::from_bytes(&bytes);
        }
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| err("no randomness".into()))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| err(e.to_string()))?;
        f.write_all(format!("{}\n", hex::encode(bytes)).as_bytes())
            .map_err(|e| err(e.to_string()))?;
        Kek::from_bytes(&bytes)
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

fn seal(key: &LessSafeKey, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, ()> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new().fill(&mut nonce).map_err(|_| ())?;
    let mut buf = plaintext.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut buf,
    )
    .map_err(|_| ())?;
    let mut out = Vec::with_capacity(4 + NONCE_LEN + buf.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&buf);
    Ok(out)
}

fn open(key: &LessSafeKey, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, ()> {
    if sealed.len() < 4 + NONCE_LEN + 16 || &sealed[..4] != MAGIC {
        return Err(());
    }
    let nonce = Nonce::try_assume_unique_for_key(&sealed[4..4 + NONCE_LEN]).map_err(|_| ())?;
    let mut buf = sealed[4 + NONCE_LEN..].to_vec();
    let plain = key
        .open_in_place(nonce, Aad::from(aad), &mut buf)
        .map_err(|_| ())?;
    Ok(plain.to_vec())
}

/// Where blobs are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    Local(PathBuf),
    S3 {
        bucket: String,
        endpoint: Option<String>,
        region: String,
        access_key_id: String,
        secret_access_key: crate::config::Secret,
        allow_http: bool,
    },
}

/// A stored blob, as events reference it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBlob {
    pub key: String,
    /// HMAC-SHA-256 of the plaintext under the data key's digest key (see
    /// [`BlobStore::keyed_digest`]).
    pub hmac: Digest,
    pub size_bytes: u64,
}

/// A data key, unwrapped: AES-256-GCM for the blobs, and the HMAC key that
/// makes their digests (derived from it, so destroying one destroys both).
struct DataKey {
    aead: LessSafeKey,
    digest: hmac::Key,
}

impl DataKey {
    fn new(dek: &[u8]) -> Option<DataKey> {
        let aead = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, dek).ok()?);
        let derived = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, dek),
            b"glassbox-blob-digest-v1",
        );
        Some(DataKey {
            aead,
            digest: hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()),
        })
    }

    fn digest(&self, bytes: &[u8]) -> Digest {
        Digest::from_slice(hmac::sign(&self.digest, bytes).as_ref()).unwrap_or(Digest::ZERO)
    }
}

#[derive(Clone)]
pub struct BlobStore {
    store: Arc<dyn ObjectStore>,
    pool: PgPool,
    kek: Arc<Kek>,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlobStore({}, kek {})", self.store, self.kek.id)
    }
}

fn db(step: &'static str) -> impl FnOnce(sqlx::Error) -> BlobError {
    move |source| BlobError::Database { step, source }
}

impl BlobStore {
    pub fn new(backend: &Backend, pool: PgPool, kek: Kek) -> Result<BlobStore, BlobError> {
        let store: Arc<dyn ObjectStore> = match backend {
            Backend::Local(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| BlobError::Config(format!("{}: {e}", dir.display())))?;
                Arc::new(
                    object_store::local::LocalFileSystem::new_with_prefix(dir)
                        .map_err(|e| BlobError::Config(format!("{}: {e}", dir.display())))?,
                )
            }
            Backend::S3 {
                bucket,
                endpoint,
                region,
                access_key_id,
                secret_access_key,
                allow_http,
            } => {
                let mut b = object_store::aws::AmazonS3Builder::new()
                    .with_bucket_name(bucket)
                    .with_region(region)
                    .with_access_key_id(access_key_id)
                    .with_secret_access_key(secret_access_key.expose())
                    .with_allow_http(*allow_http);
                if let Some(e) = endpoint {
                    b = b.with_endpoint(e).with_virtual_hosted_style_request(false);
                }
                Arc::new(
                    b.build()
                        .map_err(|e| BlobError::Config(format!("S3 bucket {bucket}: {e}")))?,
                )
            }
        };
        Ok(BlobStore {
            store,
            pool,
            kek: Arc::new(kek),
        })
    }

    fn dek_aad(key_id: &str) -> Vec<u8> {
        [b"glassbox-dek-v1\0".as_slice(), key_id.as_bytes()].concat()
    }

    fn blob_aad(key_id: &str, path: &str) -> Vec<u8> {
        [
            b"glassbox-blob-v1\0".as_slice(),
            key_id.as_bytes(),
            b"\0",
            path.as_bytes(),
        ]
        .concat()
    }

    /// Creates the data key `key_id` (idempotent).
    pub async fn create_data_key(&self, key_id: &str, tenant: &str) -> Result<(), BlobError> {
        let mut dek = [0u8; 32];
        SystemRandom::new()
            .fill(&mut dek)
            .map_err(|_| BlobError::Crypto {
                step: "create data key",
                subject: key_id.to_owned(),
            })?;
        let wrapped =
            seal(&self.kek.key, &Self::dek_aad(key_id), &dek).map_err(|_| BlobError::Crypto {
                step: "wrap data key",
                subject: key_id.to_owned(),
            })?;
        sqlx::query(
            "INSERT INTO blobs.data_keys (key_id, tenant, kek_id, wrapped) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (key_id) DO NOTHING",
        )
        .bind(key_id)
        .bind(tenant)
        .bind(self.kek.id())
        .bind(&wrapped)
        .execute(&self.pool)
        .await
        .map_err(db("create data key"))?;
        Ok(())
    }

    async fn data_key(&self, key_id: &str, path: &str) -> Result<DataKey, BlobError> {
        let row = sqlx::query("SELECT wrapped FROM blobs.data_keys WHERE key_id = $1")
            .bind(key_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("read data key"))?;
        let Some(row) = row else {
            return Err(BlobError::UnknownKey {
                key_id: key_id.to_owned(),
                path: path.to_owned(),
            });
        };
        let wrapped: Option<Vec<u8>> = row.try_get("wrapped").map_err(db("read data key"))?;
        let Some(wrapped) = wrapped else {
            return Err(BlobError::KeyDestroyed {
                key_id: key_id.to_owned(),
                path: path.to_owned(),
            });
        };
        let dek = open(&self.kek.key, &Self::dek_aad(key_id), &wrapped).map_err(|_| {
            BlobError::Crypto {
                step: "unwrap data key",
                subject: key_id.to_owned(),
            }
        })?;
        DataKey::new(&dek).ok_or_else(|| BlobError::Crypto {
            step: "unwrap data key",
            subject: key_id.to_owned(),
        })
    }

    /// The keyed digest of `bytes` under data key `key_id`: what events record
    /// instead of a plain SHA-256 (a plain digest of a short input lets anyone
    /// confirm a guess; this one needs the data key, and dies with it).
    pub async fn keyed_digest(&self, key_id: &str, bytes: &[u8]) -> Result<Digest, BlobError> {
        Ok(self.data_key(key_id, "-").await?.digest(bytes))
    }

    /// Like [`put`](Self::put), at a fresh name `<prefix>/<random>` that no
    /// program can influence (for outputs: a program's file name never
    /// becomes part of a blob name).
    pub async fn put_new(
        &self,
        key_id: &str,
        prefix: &str,
        plaintext: &[u8],
    ) -> Result<StoredBlob, BlobError> {
        let mut id = [0u8; 16];
        SystemRandom::new()
            .fill(&mut id)
            .map_err(|_| BlobError::Crypto {
                step: "name a blob",
                subject: prefix.to_owned(),
            })?;
        self.put(key_id, &format!("{prefix}/{}", hex::encode(id)), plaintext)
            .await
    }

    /// Encrypts `plaintext` under data key `key_id` and stores it at `path`.
    #[tracing::instrument(name = "blob.put", skip_all, fields(bytes = plaintext.len()))]
    pub async fn put(
        &self,
        key_id: &str,
        path: &str,
        plaintext: &[u8],
    ) -> Result<StoredBlob, BlobError> {
        let key = self.data_key(key_id, path).await?;
        let sealed = seal(&key.aead, &Self::blob_aad(key_id, path), plaintext).map_err(|_| {
            BlobError::Crypto {
                step: "encrypt blob",
                subject: path.to_owned(),
            }
        })?;
        self.store
            .put(&ObjectPath::from(path), PutPayload::from(sealed))
            .await
            .map_err(|source| BlobError::Store {
                step: "put blob",
                path: path.to_owned(),
                source,
            })?;
        Ok(StoredBlob {
            key: path.to_owned(),
            hmac: key.digest(plaintext),
            size_bytes: plaintext.len() as u64,
        })
    }

    /// Reads and decrypts the blob at `path` (data key `key_id`).
    pub async fn get(&self, key_id: &str, path: &str) -> Result<Vec<u8>, BlobError> {
        self.get_inner(key_id, path, None).await
    }

    /// Reads and decrypts the blob at `path` and checks it against the keyed
    /// digest an event recorded for it.
    pub async fn get_checked(
        &self,
        key_id: &str,
        path: &str,
        hmac: &Digest,
    ) -> Result<Vec<u8>, BlobError> {
        self.get_inner(key_id, path, Some(hmac)).await
    }

    #[tracing::instrument(name = "blob.get", skip_all, fields(bytes = tracing::field::Empty))]
    async fn get_inner(
        &self,
        key_id: &str,
        path: &str,
        expected: Option<&Digest>,
    ) -> Result<Vec<u8>, BlobError> {
        let key = self.data_key(key_id, path).await?;
        let sealed = match self.store.get(&ObjectPath::from(path)).await {
            Ok(r) => r.bytes().await.map_err(|source| BlobError::Store {
                step: "read blob",
                path: path.to_owned(),
                source,
            })?,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(BlobError::NotFound {
                    path: path.to_owned(),
                });
            }
            Err(source) => {
                return Err(BlobError::Store {
                    step: "get blob",
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let plain = open(&key.aead, &Self::blob_aad(key_id, path), &sealed).map_err(|_| {
            BlobError::Crypto {
                step: "decrypt blob",
                subject: path.to_owned(),
            }
        })?;
        if let Some(want) = expected
            && key.digest(&plain) != *want
        {
            return Err(BlobError::DigestMismatch {
                path: path.to_owned(),
            });
        }
        tracing::Span::current().record("bytes", plain.len());
        Ok(plain)
    }

    /// Deletes every blob whose name starts with `prefix/` (after a data key
    /// was destroyed: the ciphertext is unreadable anyway; this frees the
    /// space and leaves nothing behind). Returns how many were deleted.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<u64, BlobError> {
        use futures::TryStreamExt as _;
        let base = ObjectPath::from(prefix);
        let names: Vec<ObjectPath> = self
            .store
            .list(Some(&base))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(|source| BlobError::Store {
                step: "list blobs",
                path: prefix.to_owned(),
                source,
            })?;
        let mut n = 0;
        for name in names {
            match self.store.delete(&name).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => n += 1,
                Err(source) => {
                    return Err(BlobError::Store {
                        step: "delete blob",
                        path: name.to_string(),
                        source,
                    });
                }
            }
        }
        Ok(n)
    }

    /// Destroys a data key; returns whether it was still live.
    pub async fn destroy_key(&self, key_id: &str) -> Result<bool, BlobError> {
        let r = sqlx::query(
            "UPDATE blobs.data_keys SET wrapped = NULL, destroyed_at = now() \
             WHERE key_id = $1 AND wrapped IS NOT NULL",
        )
        .bind(key_id)
        .execute(&self.pool)
        .await
        .map_err(db("destroy data key"))?;
        Ok(r.rows_affected() == 1)
    }
}
