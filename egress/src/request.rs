//! What a program asks the proxy for, parsed from bytes it wrote (hostile):
//! the request head (bounded), its destination, and — for TLS — the server
//! name in the ClientHello, which must agree with it.

use std::net::IpAddr;

/// Most bytes of a request head.
pub const MAX_HEAD: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("the request head is longer than {MAX_HEAD} bytes")]
    TooLong,
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("the Host header ({host}) does not agree with the request target ({target})")]
    HostMismatch { host: String, target: String },
    #[error("only CONNECT and absolute-form http:// requests go through this proxy")]
    NotProxyRequest,
}

/// A destination: a lower-case name (or IP literal) and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Destination {
    pub host: String,
    pub port: u16,
}

impl Destination {
    /// `host:port` (IPv6 literals in brackets); `default_port` when absent.
    pub fn parse(authority: &str, default_port: Option<u16>) -> Result<Destination, RequestError> {
        let bad = RequestError::Malformed("bad host:port");
        let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
            let (h, after) = rest.split_once(']').ok_or(bad.clone())?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(bad),
            };
            h.parse::<std::net::Ipv6Addr>().map_err(|_| bad.clone())?;
            (h.to_owned(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (authority.to_owned(), None),
            }
        };
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or(bad.clone())?,
            None => default_port.ok_or(bad.clone())?,
        };
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let ok = !host.is_empty()
            && host.len() <= 253
            && (host.parse::<IpAddr>().is_ok()
                || host.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                }));
        if !ok {
            return Err(bad);
        }
        Ok(Destination { host, port })
    }

    /// The host is an IP literal, not a name.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `CONNECT host:port`: a tunnel.
    Connect(Destination),
    /// `METHOD http://host[:port]/path`: forwarded with the request line in
    /// origin form (`origin_head`) and the rest of the head unchanged.
    Forward {
        dest: Destination,
        origin_head: Vec<u8>,
    },
}

/// The end of the head (`\r\n\r\n`) in `buf`, if it is there.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

pub fn parse_head(head: &[u8]) -> Result<Request, RequestError> {
    let text = std::str::from_utf8(head).map_err(|_| RequestError::Malformed("not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let line = lines.next().ok_or(RequestError::Malformed("empty"))?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(RequestError::Malformed("request line"));
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() {
        return Err(RequestError::Malformed("request line"));
    }
    let mut host_header: Option<&str> = None;
    for l in lines.take_while(|l| !l.is_empty()) {
        let (name, value) = l
            .split_once(':')
            .ok_or(RequestError::Malformed("header line"))?;
        if name.eq_ignore_ascii_case("host") {
            if host_header.is_some() {
                return Err(RequestError::Malformed("two Host headers"));
            }
            host_header = Some(value.trim());
        }
    }
    if method == "CONNECT" {
        let dest = Destination::parse(target, None)?;
        if let Some(h) = host_header {
            let hd = Destination::parse(h, Some(dest.port))?;
            if hd != dest {
                return Err(RequestError::HostMismatch {
                    host: h.chars().take(128).collect(),
                    target: dest.to_string(),
                });
            }
        }
        return Ok(Request::Connect(dest));
    }
    let rest = target
        .strip_prefix("http://")
        .ok_or(RequestError::NotProxyRequest)?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.contains('@') {
        return Err(RequestError::Malformed("credentials in the URI"));
    }
    let dest = Destination::parse(authority, Some(80))?;
    let host = host_header.ok_or(RequestError::Malformed("no Host header"))?;
    let hd = Destination::parse(host, Some(80))?;
    if hd != dest {
        return Err(RequestError::HostMismatch {
            host: host.chars().take(128).collect(),
            target: dest.to_string(),
        });
    }
    let mut origin_head = format!("{method} {path} {version}").into_bytes();
    origin_head.extend_from_slice(&head[line.len()..]);
    Ok(Request::Forward { dest, origin_head })
}

/// The server name of a TLS ClientHello at the start of `buf`: `Ok(None)`
/// when `buf` is not TLS or names no server, `Err` when it is TLS but
/// malformed. Bounded by `buf`'s length; never panics on hostile bytes.
pub fn client_hello_sni(buf: &[u8]) -> Result<Option<String>, RequestError> {
    let bad = RequestError::Malformed("TLS ClientHello");
    if buf.first() != Some(&0x16) {
        return Ok(None);
    }
    let mut r = Reader(buf);
    r.skip(5).ok_or(bad.clone())?; // record header
    if r.u8().ok_or(bad.clone())? != 1 {
        return Err(bad); // not a ClientHello
    }
    r.skip(3 + 2 + 32).ok_or(bad.clone())?; // length, version, random
    let sid = usize::from(r.u8().ok_or(bad.clone())?);
    r.skip(sid).ok_or(bad.clone())?;
    let suites = usize::from(r.u16().ok_or(bad.clone())?);
    r.skip(suites).ok_or(bad.clone())?;
    let comp = usize::from(r.u8().ok_or(bad.clone())?);
    r.skip(comp).ok_or(bad.clone())?;
    let Some(ext_len) = r.u16() else {
        return Ok(None);
    };
    let mut exts = Reader(r.take(usize::from(ext_len)).ok_or(bad.clone())?);
    while let Some(kind) = exts.u16() {
        let len = usize::from(exts.u16().ok_or(bad.clone())?);
        let body = exts.take(len).ok_or(bad.clone())?;
        if kind == 0 {
            let mut sni = Reader(body);
            let list = usize::from(sni.u16().ok_or(bad.clone())?);
            let mut names = Reader(sni.take(list).ok_or(bad.clone())?);
            while let Some(name_type) = names.u8() {
                let n = usize::from(names.u16().ok_or(bad.clone())?);
                let name = names.take(n).ok_or(bad.clone())?;
                if name_type == 0 {
                    let name = std::str::from_utf8(name).map_err(|_| bad.clone())?;
                    return Ok(Some(name.trim_end_matches('.').to_ascii_lowercase()));
                }
            }
            return Ok(None);
        }
    }
    Ok(None)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::client_hello as hello;

    fn dest(h: &str, p: u16) -> Destination {
        Destination {
            host: h.into(),
            port: p,
        }
    }

    #[test]
    fn connect_and_absolute_form_name_their_destination() {
        assert_eq!(
            parse_head(
                b"CONNECT API.Example.com.:443 HTTP/1.1\r\nHost: api.example.com:443\r\n\r\n"
            ),
            Ok(Request::Connect(dest("api.example.com", 443)))
        );
        assert_eq!(
            parse_head(b"CONNECT [::1]:8443 HTTP/1.1\r\n\r\n"),
            Ok(Request::Connect(dest("::1", 8443)))
        );
        let Ok(Request::Forward {
            dest: d,
            origin_head,
        }) =
            parse_head(b"GET http://example.org/a?b HTTP/1.1\r\nHost: example.org\r\nX: y\r\n\r\n")
        else {
            panic!("forward");
        };
        assert_eq!(d, dest("example.org", 80));
        assert_eq!(
            origin_head,
            b"GET /a?b HTTP/1.1\r\nHost: example.org\r\nX: y\r\n\r\n".to_vec()
        );
    }

    #[test]
    fn hostile_heads_are_refused() {
        for head in [
            &b"GET /relative HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"GET http://a.example/ HTTP/1.1\r\nHost: b.example\r\n\r\n",
            b"CONNECT a.example:443 HTTP/1.1\r\nHost: b.example:443\r\n\r\n",
            b"GET http://a.example/ HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
            b"GET http://user:pw@a.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n",
            b"CONNECT a.example HTTP/1.1\r\n\r\n",
            b"CONNECT a.example:0 HTTP/1.1\r\n\r\n",
            b"CONNECT a.example:99999 HTTP/1.1\r\n\r\n",
            b"CONNECT a b c d\r\n\r\n",
            b"CONNECT bad_host!:443 HTTP/1.1\r\n\r\n",
            b"CONNECT [::1:443 HTTP/1.1\r\n\r\n",
            b"\xff\xfe\r\n\r\n",
            b"GET http://a.example/ HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                parse_head(head).is_err(),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn the_server_name_is_read_from_a_client_hello_and_garbage_never_panics() {
        assert_eq!(
            client_hello_sni(&hello("API.example.com")),
            Ok(Some("api.example.com".into()))
        );
        assert_eq!(client_hello_sni(b"GET / HTTP/1.1\r\n"), Ok(None));
        let h = hello("api.example.com");
        for cut in 1..h.len() {
            // Every truncation is an error or no name, never a panic or a wrong name.
            if let Ok(Some(n)) = client_hello_sni(&h[..cut]) {
                panic!("a truncated hello named {n}");
            }
        }
        let mut lying = h.clone();
        lying[9 + 2 + 32] = 0xff; // session id length beyond the record
        assert!(client_hello_sni(&lying).is_err());
    }
}
