//! Secrets brokered at the edge: the sandbox holds a placeholder; the proxy
//! puts the value in its place only in request headers sent to the hosts the
//! secret's policy names.
//!
//! For those hosts (and only those) the proxy terminates the program's TLS
//! with a certificate from a CA of the sandbox's own (made when the proxy
//! starts, name-constrained to the broker hosts, its key never leaving the
//! runner; the sandbox trusts it through the bundle the runner gives it), and
//! re-originates TLS to the real host with full verification against the
//! runner's roots. Each intercepted connection carries one request (the proxy
//! makes it `Connection: close`): its head is read (bounded), placeholders in
//! header values are replaced, and the response is streamed back with any
//! echo of a value masked (same length, so framing holds).
//!
//! A placeholder anywhere else is left as it is: in a header to a host that is
//! not the secret's, in the request target, over plain HTTP (never a value in
//! clear text), in a body. What the proxy sees of it is reported.

use crate::request::Destination;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One secret the proxy may put in place of its placeholder.
#[derive(Clone)]
pub struct Brokered {
    pub name: String,
    /// What the sandbox holds instead of the value.
    pub placeholder: String,
    value: String,
    /// `(host, port)` the value may be sent to (exact names).
    pub hosts: Vec<(String, u16)>,
}

impl std::fmt::Debug for Brokered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Brokered")
            .field("name", &self.name)
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

impl Brokered {
    /// A brokered secret with a fresh random placeholder.
    pub fn new(name: &str, value: String, hosts: Vec<(String, u16)>) -> Result<Self, BrokerError> {
        let mut random = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random)
            .map_err(|_| BrokerError::Random)?;
        let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
        Ok(Brokered {
            name: name.to_owned(),
            placeholder: format!("glassbox-brokered-{name}-{hex}"),
            value,
            hosts,
        })
    }

    fn goes_to(&self, dest: &Destination) -> bool {
        self.hosts
            .iter()
            .any(|(h, p)| *p == dest.port && *h == dest.host)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker: no randomness for a placeholder")]
    Random,
    #[error("broker: {step}: {detail}")]
    Certificate { step: &'static str, detail: String },
    #[error("broker: TLS configuration: {0}")]
    Tls(String),
}

fn cert_err(step: &'static str) -> impl FnOnce(rcgen::Error) -> BrokerError {
    move |e| BrokerError::Certificate {
        step,
        detail: e.to_string(),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A sandbox's broker: its secrets, its CA and the TLS settings both ways.
pub struct Broker {
    secrets: Vec<Brokered>,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    upstream: Arc<rustls::ClientConfig>,
    leaves: Mutex<HashMap<String, Arc<rustls::ServerConfig>>>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("secrets", &self.secrets)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// A broker for `secrets` with a new CA (named `label`, constrained to the
    /// secrets' hosts); upstream TLS is verified against `roots`.
    pub fn new(
        label: &str,
        secrets: Vec<Brokered>,
        roots: rustls::RootCertStore,
    ) -> Result<Broker, BrokerError> {
        let key = rcgen::KeyPair::generate().map_err(cert_err("generate the CA key"))?;
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("Glassbox sandbox CA {label}"),
        );
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let mut names: Vec<String> = secrets
            .iter()
            .flat_map(|s| s.hosts.iter().map(|(h, _)| h.clone()))
            .collect();
        names.sort();
        names.dedup();
        params.name_constraints = Some(rcgen::NameConstraints {
            permitted_subtrees: names
                .into_iter()
                .map(rcgen::GeneralSubtree::DnsName)
                .collect(),
            excluded_subtrees: Vec::new(),
        });
        let ca = params.self_signed(&key).map_err(cert_err("sign the CA"))?;
        let upstream = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| BrokerError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Broker {
            secrets,
            ca_pem: ca.pem(),
            ca_der: ca.der().clone(),
            issuer: rcgen::Issuer::new(params, key),
            upstream: Arc::new(upstream),
            leaves: Mutex::new(HashMap::new()),
        })
    }

    /// The CA certificate the sandbox trusts (PEM).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn secrets(&self) -> &[Brokered] {
        &self.secrets
    }

    /// Whether connections to `dest` are intercepted (a secret goes there).
    pub fn intercepts(&self, dest: &Destination) -> bool {
        self.secrets.iter().any(|s| s.goes_to(dest))
    }

    /// The server side for `host`: a certificate for it from the sandbox's CA.
    pub(crate) fn acceptor(&self, host: &str) -> Result<Arc<rustls::ServerConfig>, BrokerError> {
        if let Some(c) = self.leaves.lock().ok().and_then(|l| l.get(host).cloned()) {
            return Ok(c);
        }
        let key = rcgen::KeyPair::generate().map_err(cert_err("generate a host key"))?;
        let params = rcgen::CertificateParams::new(vec![host.to_owned()])
            .map_err(cert_err("name a host certificate"))?;
        let leaf = params
            .signed_by(&key, &self.issuer)
            .map_err(cert_err("sign a host certificate"))?;
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| BrokerError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone(), self.ca_der.clone()],
                PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .map_err(|e| BrokerError::Tls(e.to_string()))?;
        let config = Arc::new(config);
        if let Ok(mut l) = self.leaves.lock() {
            l.insert(host.to_owned(), config.clone());
        }
        Ok(config)
    }

    pub(crate) fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.upstream.clone())
    }

    pub(crate) fn server_name(host: &str) -> Option<ServerName<'static>> {
        ServerName::try_from(host.to_owned()).ok()
    }

    /// Replaces placeholders in a request head's header values, for the
    /// secrets that go to `dest` (`intercepted`: the head travels over the
    /// re-originated TLS; otherwise nothing is replaced). Returns the new head
    /// (made `Connection: close` when intercepted) and what was seen:
    /// (secret name, header name, substituted).
    pub(crate) fn rewrite(
        &self,
        head: &[u8],
        dest: &Destination,
        intercepted: bool,
    ) -> (Vec<u8>, Vec<Sighting>) {
        let text = String::from_utf8_lossy(head);
        let mut seen = Vec::new();
        let mut out = String::with_capacity(head.len() + 64);
        let mut lines = text.split("\r\n");
        if let Some(first) = lines.next() {
            for s in &self.secrets {
                if first.contains(&s.placeholder) {
                    seen.push(Sighting {
                        secret: s.name.clone(),
                        header: ":request-target".into(),
                        substituted: false,
                    });
                }
            }
            out.push_str(first);
            out.push_str("\r\n");
        }
        for line in lines {
            if line.is_empty() {
                continue;
            }
            let name = line
                .split(':')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if intercepted
                && matches!(
                    name.as_str(),
                    "connection" | "keep-alive" | "proxy-connection"
                )
            {
                continue;
            }
            let mut line = line.to_owned();
            for s in &self.secrets {
                if line.contains(&s.placeholder) {
                    let substitute = intercepted && s.goes_to(dest);
                    if substitute {
                        line = line.replace(&s.placeholder, &s.value);
                    }
                    seen.push(Sighting {
                        secret: s.name.clone(),
                        header: name.chars().take(64).collect(),
                        substituted: substitute,
                    });
                }
            }
            out.push_str(&line);
            out.push_str("\r\n");
        }
        if intercepted {
            out.push_str("Connection: close\r\n");
        }
        out.push_str("\r\n");
        (out.into_bytes(), seen)
    }

    /// The values to mask in what comes back on a connection to `dest`.
    pub(crate) fn masks(&self, dest: &Destination) -> Vec<(String, Vec<u8>)> {
        self.secrets
            .iter()
            .filter(|s| s.goes_to(dest))
            .map(|s| (s.name.clone(), s.value.as_bytes().to_vec()))
            .collect()
    }

    /// Whether `head` holds any placeholder at all.
    pub(crate) fn mentioned(&self, head: &[u8]) -> bool {
        let text = String::from_utf8_lossy(head);
        self.secrets.iter().any(|s| text.contains(&s.placeholder))
    }
}

/// A placeholder the proxy saw in a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighting {
    pub secret: String,
    /// The header's name (lower-case), or `:request-target`.
    pub header: String,
    pub substituted: bool,
}

/// Masks values in a byte stream (same length: `*` for each byte), also
/// where a value is split across chunks.
pub(crate) struct Mask {
    values: Vec<(String, Vec<u8>)>,
    carry: Vec<u8>,
    keep: usize,
    /// Per secret name, how many were masked.
    pub(crate) counts: HashMap<String, u64>,
}

impl Mask {
    pub(crate) fn new(values: Vec<(String, Vec<u8>)>) -> Mask {
        let keep = values
            .iter()
            .map(|(_, v)| v.len().saturating_sub(1))
            .max()
            .unwrap_or(0);
        Mask {
            values: values.into_iter().filter(|(_, v)| !v.is_empty()).collect(),
            carry: Vec::new(),
            keep,
            counts: HashMap::new(),
        }
    }

    fn mask_all(&mut self, buf: &mut [u8]) {
        for (name, v) in &self.values {
            let mut i = 0;
            while i + v.len() <= buf.len() {
                if buf[i..].starts_with(v) {
                    buf[i..i + v.len()].fill(b'*');
                    *self.counts.entry(name.clone()).or_default() += 1;
                    i += v.len();
                } else {
                    i += 1;
                }
            }
        }
    }

    /// What may go on now; the last few bytes wait (they may start a value).
    pub(crate) fn push(&mut self, data: &[u8]) -> Vec<u8> {
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(data);
        self.mask_all(&mut buf);
        let cut = buf.len().saturating_sub(self.keep);
        self.carry = buf.split_off(cut);
        buf
    }

    /// The rest, at the end of the stream.
    pub(crate) fn finish(&mut self) -> Vec<u8> {
        let mut buf = std::mem::take(&mut self.carry);
        self.mask_all(&mut buf);
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker() -> Broker {
        Broker::new(
            "t",
            vec![
                Brokered::new(
                    "TOKEN",
                    "s3cr3t-value".into(),
                    vec![("api.test".into(), 443)],
                )
                .expect("secret"),
            ],
            rustls::RootCertStore::empty(),
        )
        .expect("broker")
    }

    fn d(host: &str, port: u16) -> Destination {
        Destination {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn placeholders_become_values_only_in_headers_to_the_secrets_hosts() {
        let b = broker();
        let p = b.secrets()[0].placeholder.clone();
        assert!(
            p.starts_with("glassbox-brokered-TOKEN-") && p.len() > 40,
            "{p}"
        );
        assert!(!format!("{:?}", b.secrets()[0]).contains("s3cr3t"));
        let head = format!(
            "GET /x?t={p} HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer {p}\r\nConnection: keep-alive\r\n\r\n"
        );
        let (out, seen) = b.rewrite(head.as_bytes(), &d("api.test", 443), true);
        let out = String::from_utf8(out).expect("utf8");
        assert!(
            out.contains("Authorization: Bearer s3cr3t-value\r\n"),
            "{out}"
        );
        // Not in the request target, and one request per connection.
        assert!(
            out.starts_with(&format!("GET /x?t={p} HTTP/1.1\r\n")),
            "{out}"
        );
        assert!(
            out.ends_with("Connection: close\r\n\r\n") && !out.contains("keep-alive"),
            "{out}"
        );
        assert_eq!(
            seen,
            [
                Sighting {
                    secret: "TOKEN".into(),
                    header: ":request-target".into(),
                    substituted: false
                },
                Sighting {
                    secret: "TOKEN".into(),
                    header: "authorization".into(),
                    substituted: true
                },
            ]
        );
        // Another host, another port, or not intercepted (plain HTTP): left as it is.
        for (dest, intercepted) in [
            (d("other.test", 443), true),
            (d("api.test", 8443), true),
            (d("api.test", 443), false),
        ] {
            let (out, seen) = b.rewrite(head.as_bytes(), &dest, intercepted);
            assert!(!String::from_utf8_lossy(&out).contains("s3cr3t"), "{dest}");
            assert!(seen.iter().all(|s| !s.substituted));
        }
        assert!(b.intercepts(&d("api.test", 443)) && !b.intercepts(&d("api.test", 80)));
    }

    #[test]
    fn echoed_values_are_masked_even_across_chunks() {
        let mut m = Mask::new(vec![("TOKEN".into(), b"s3cr3t-value".to_vec())]);
        let mut out = Vec::new();
        for chunk in [
            &b"HTTP/1.1 200 OK\r\n\r\nyou sent s3cr"[..],
            b"3t-val",
            b"ue and s3cr3t-value",
            b"!",
        ] {
            out.extend(m.push(chunk));
        }
        out.extend(m.finish());
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "HTTP/1.1 200 OK\r\n\r\nyou sent ************ and ************!"
        );
        assert_eq!(m.counts.get("TOKEN"), Some(&2));
    }

    #[test]
    fn host_certificates_come_from_the_sandboxs_ca() {
        let b = broker();
        assert!(b.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let a = b.acceptor("api.test").expect("acceptor");
        let again = b.acceptor("api.test").expect("acceptor");
        assert!(Arc::ptr_eq(&a, &again), "made once per host");
    }
}
