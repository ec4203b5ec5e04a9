//! Service mode (issue 15): how the runner reaches a port on a session's
//! loopback. The sandbox has no network device and the host cannot connect
//! into it, so the forwarder inside keeps a few connections open *to* a Unix
//! socket of the runner's in the session's egress directory (`service.sock`,
//! `--host-uds=open`); the runner takes one per request, names the port
//! (`PORT <n>`), and on `OK` speaks HTTP/1.1 through it to whatever listens
//! there. Only the control plane asks the runner (its data-plane gRPC API,
//! after `glassbox.services` decided), so nothing reaches a session's port any
//! other way.
//!
//! Everything from the sandbox is hostile: offers are bounded (extra ones are
//! dropped), the answer line is at most 64 bytes, the response at most
//! [`MAX_BODY`] plus a 16 KiB head, all within [`EXCHANGE_WAIT`].

use std::collections::VecDeque;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::Notify;

/// The largest request or response body carried (under gRPC's 4 MiB).
pub const MAX_BODY: usize = glassbox_domain::request::MAX_SERVICE_BODY;
/// The largest response head.
const MAX_HEAD: usize = 16 * 1024;
/// Idle offers kept at most (the forwarder makes two).
const IDLE_MAX: usize = 8;
/// How long a request waits for an offer.
const OFFER_WAIT: Duration = Duration::from_secs(3);
/// How long one request may take, end to end.
pub const EXCHANGE_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("service mode: {0}")]
    Unavailable(String),
    #[error("service mode: port {port}: {reason}")]
    Refused { port: u16, reason: String },
    #[error("service mode: the answer: {0}")]
    BadAnswer(String),
}

/// A session's service socket and the connections its forwarder offered.
pub struct ServiceDock {
    offers: Arc<Mutex<VecDeque<UnixStream>>>,
    ready: Arc<Notify>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for ServiceDock {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl ServiceDock {
    /// Listens on `dir/service.sock` (0600, owned by the sandbox's uid).
    pub fn bind(dir: &Path) -> std::io::Result<ServiceDock> {
        let sock = dir.join(crate::spec::SERVICE_SOCKET);
        let listener = tokio::net::UnixListener::bind(&sock)?;
        std::os::unix::fs::chown(&sock, Some(65534), Some(65534))?;
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))?;
        let offers: Arc<Mutex<VecDeque<UnixStream>>> = Arc::default();
        let ready = Arc::new(Notify::new());
        let accept = {
            let (offers, ready) = (offers.clone(), ready.clone());
            tokio::spawn(async move {
                while let Ok((s, _)) = listener.accept().await {
                    if let Ok(mut o) = offers.lock()
                        && o.len() < IDLE_MAX
                    {
                        o.push_back(s);
                    }
                    ready.notify_waiters();
                    ready.notify_one();
                }
            })
        };
        Ok(ServiceDock {
            offers,
            ready,
            accept,
        })
    }

    fn take(&self) -> Option<UnixStream> {
        self.offers.lock().ok().and_then(|mut o| o.pop_front())
    }

    /// A byte stream to `port` on the sandbox's loopback.
    pub async fn connect(&self, port: u16) -> Result<UnixStream, PortError> {
        let deadline = tokio::time::Instant::now() + OFFER_WAIT;
        let mut s = loop {
            if let Some(s) = self.take() {
                break s;
            }
            if tokio::time::timeout_at(deadline, self.ready.notified())
                .await
                .is_err()
            {
                return Err(PortError::Unavailable(
                    "the session's forwarder offers no connection".into(),
                ));
            }
        };
        s.write_all(format!("PORT {port}\n").as_bytes())
            .await
            .map_err(|e| PortError::Unavailable(e.to_string()))?;
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        tokio::time::timeout(OFFER_WAIT, async {
            while !line.ends_with(b"\n") && line.len() < 64 {
                match s.read(&mut b).await {
                    Ok(1) => line.push(b[0]),
                    _ => break,
                }
            }
        })
        .await
        .map_err(|_| PortError::Unavailable("the forwarder did not answer".into()))?;
        if line == b"OK\n" {
            Ok(s)
        } else {
            Err(PortError::Refused {
                port,
                reason: String::from_utf8_lossy(&line)
                    .trim()
                    .trim_start_matches("ERR ")
                    .chars()
                    .take(60)
                    .collect(),
            })
        }
    }
}

/// One HTTP request to a session's port.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub method: String,
    /// Path and query, starting with `/`.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Headers that belong to one hop, never passed on (either way).
pub fn hop_by_hop(name: &str) -> bool {
    matches!(
        name.to_ascii_lowercase().as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

fn token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Sends `req` to `port` through `stream` and reads the whole answer.
pub async fn exchange(
    mut stream: UnixStream,
    port: u16,
    req: &HttpRequest,
) -> Result<HttpResponse, PortError> {
    if !token(&req.method) || !req.path.starts_with('/') || req.path.contains(['\r', '\n', ' ']) {
        return Err(PortError::BadAnswer(
            "not a request that can be sent".into(),
        ));
    }
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n",
        req.method, req.path
    );
    for (k, v) in &req.headers {
        if token(k) && !hop_by_hop(k) && !v.contains(['\r', '\n']) {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        req.body.len()
    ));
    let io = async {
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| PortError::BadAnswer(e.to_string()))?;
        stream
            .write_all(&req.body)
            .await
            .map_err(|e| PortError::BadAnswer(e.to_string()))?;
        let mut all = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    all.extend_from_slice(&buf[..n]);
                    if all.len() > MAX_HEAD + MAX_BODY + 64 * 1024 {
                        return Err(PortError::BadAnswer(format!(
                            "longer than {MAX_BODY} bytes"
                        )));
                    }
                }
            }
        }
        parse_response(&all)
    };
    tokio::time::timeout(EXCHANGE_WAIT, io)
        .await
        .map_err(|_| PortError::BadAnswer(format!("no answer in {} s", EXCHANGE_WAIT.as_secs())))?
}

/// An HTTP/1.x response, read to the end of the connection (hostile bytes).
pub fn parse_response(all: &[u8]) -> Result<HttpResponse, PortError> {
    let bad = |r: &str| PortError::BadAnswer(r.to_owned());
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .filter(|e| *e <= MAX_HEAD)
        .ok_or_else(|| bad("no complete response head"))?;
    let head = std::str::from_utf8(&all[..end]).map_err(|_| bad("a head that is not text"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err(bad("no status line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(bad("not HTTP/1"));
    }
    let status: u16 = code
        .parse()
        .ok()
        .filter(|c| (100..=599).contains(c))
        .ok_or_else(|| bad("no status code"))?;
    let mut headers = Vec::new();
    let (mut length, mut chunked) = (None, false);
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            return Err(bad("a header without a colon"));
        };
        let (k, v) = (k.trim(), v.trim());
        match k.to_ascii_lowercase().as_str() {
            "content-length" => length = v.parse::<usize>().ok(),
            "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
            _ => {}
        }
        if token(k) && !hop_by_hop(k) {
            headers.push((k.to_owned(), v.to_owned()));
        }
    }
    let rest = &all[end + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else {
        match length {
            Some(n) => rest
                .get(..n)
                .ok_or_else(|| bad("a body shorter than its length"))?
                .to_vec(),
            None => rest.to_vec(),
        }
    };
    if body.len() > MAX_BODY {
        return Err(PortError::BadAnswer(format!(
            "longer than {MAX_BODY} bytes"
        )));
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, PortError> {
    let bad = |r: &str| PortError::BadAnswer(r.to_owned());
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .filter(|e| *e <= 32)
            .ok_or_else(|| bad("a chunk without a size"))?;
        let size = std::str::from_utf8(&b[..eol])
            .ok()
            .map(|s| s.split(';').next().unwrap_or("").trim())
            .and_then(|s| usize::from_str_radix(s, 16).ok())
            .ok_or_else(|| bad("a chunk size that is not hex"))?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if size > MAX_BODY || out.len() + size > MAX_BODY {
            return Err(PortError::BadAnswer(format!(
                "longer than {MAX_BODY} bytes"
            )));
        }
        let chunk = b
            .get(..size)
            .ok_or_else(|| bad("a chunk shorter than its size"))?;
        out.extend_from_slice(chunk);
        b = b
            .get(size + 2..)
            .ok_or_else(|| bad("a chunk without its end"))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_read_by_length_by_chunks_or_to_the_end() {
        let r = parse_response(
            b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nhello",
        )
        .expect("to the end");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
        assert_eq!(
            r.headers,
            [("Content-Type".to_owned(), "text/plain".to_owned())]
        );
        let r = parse_response(b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nabcdef")
            .expect("length");
        assert_eq!((r.status, r.body.as_slice()), (404, &b"abc"[..]));
        let r = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n").expect("chunked");
        assert_eq!(r.body, b"abcde");
    }

    #[test]
    fn hostile_responses_are_refused_without_a_panic() {
        for bad in [
            &b""[..],
            b"garbage",
            b"HTTP/1.1 200 OK\r\n",
            b"HTTP/2 200\r\n\r\n",
            b"HTTP/1.1 999 What\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffff\r\nx",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        ] {
            assert!(
                parse_response(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut huge = b"HTTP/1.1 200 OK\r\n".to_vec();
        huge.extend(vec![b'a'; MAX_HEAD + 10]);
        assert!(parse_response(&huge).is_err());
    }

    #[test]
    fn only_end_to_end_headers_pass() {
        for h in [
            "Connection",
            "transfer-encoding",
            "Host",
            "Content-Length",
            "Upgrade",
        ] {
            assert!(hop_by_hop(h), "{h}");
        }
        assert!(!hop_by_hop("Content-Type") && !hop_by_hop("Authorization"));
    }
}
