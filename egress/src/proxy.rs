//! One sandbox's proxy: each client connection is read (bounded), decided,
//! recorded, and then tunnelled or refused with a readable 403.

use crate::addr::{AddrClass, classify};
use crate::request::{
    Destination, MAX_HEAD, Request, RequestError, client_hello_sni, head_end, parse_head,
};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a tunnel waits for the client's first bytes (a ClientHello).
const PEEK_WAIT: Duration = Duration::from_secs(2);

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The answer for one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub allow: bool,
    /// The rule that decided (shown to the program and recorded).
    pub rule: String,
    /// The rule names this destination and lets it resolve to (or be) a
    /// non-public address.
    pub allow_private: bool,
    /// What decided (e.g. the policy bundle's digest), recorded with the event.
    pub decided_by: Option<String>,
}

/// Decides each destination (the tenant's `glassbox.egress`, in the service).
pub trait Policy: Send + Sync {
    fn decide(&self, dest: &Destination) -> Verdict;
}

/// Resolves names (the host's resolver in the service; a table in tests).
pub trait Resolver: Send + Sync {
    fn resolve<'a>(
        &'a self,
        dest: &'a Destination,
    ) -> BoxFuture<'a, std::io::Result<Vec<SocketAddr>>>;
}

pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve<'a>(
        &'a self,
        dest: &'a Destination,
    ) -> BoxFuture<'a, std::io::Result<Vec<SocketAddr>>> {
        Box::pin(async move {
            Ok(tokio::net::lookup_host((dest.host.as_str(), dest.port))
                .await?
                .collect())
        })
    }
}

/// Names the operator pins to addresses (split horizon, or a test's
/// "outside" on loopback); every other name goes to the host's resolver.
/// Pinned answers are checked like any other: a private address still needs a
/// rule that allows private addresses.
pub struct StaticHosts {
    pub hosts: std::collections::HashMap<String, std::net::IpAddr>,
}

impl StaticHosts {
    /// `name=address,name=address` (`GLASSBOX_EGRESS_HOSTS`).
    pub fn parse(spec: &str) -> Result<StaticHosts, String> {
        let mut hosts = std::collections::HashMap::new();
        for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (name, addr) = item
                .split_once('=')
                .ok_or_else(|| format!("{item}: expected name=address"))?;
            let addr: std::net::IpAddr = addr
                .trim()
                .parse()
                .map_err(|_| format!("{item}: not an IP address"))?;
            hosts.insert(name.trim().trim_end_matches('.').to_ascii_lowercase(), addr);
        }
        Ok(StaticHosts { hosts })
    }
}

impl Resolver for StaticHosts {
    fn resolve<'a>(
        &'a self,
        dest: &'a Destination,
    ) -> BoxFuture<'a, std::io::Result<Vec<SocketAddr>>> {
        match self.hosts.get(&dest.host) {
            Some(ip) => {
                let a = SocketAddr::new(*ip, dest.port);
                Box::pin(async move { Ok(vec![a]) })
            }
            None => SystemResolver.resolve(dest),
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// The request could not be read as a proxy request.
    BadRequest(String),
    /// No rule allows the destination.
    Policy,
    /// An IP literal no rule names.
    IpLiteral,
    /// The name resolves to a non-public address (class) and the rule does not allow it.
    NonPublic(&'static str),
    /// The name does not resolve.
    Unresolved,
    /// The TLS server name is not the CONNECT host.
    SniMismatch(String),
    /// The sandbox has used up its connections.
    ConnectionLimit,
    /// The real host's TLS could not be verified (a brokered connection).
    UpstreamTls(String),
}

impl Denial {
    /// A stable code for the ledger (no program data in it: a bad request's
    /// or a server name's text is only shown to the program).
    pub fn code(&self) -> String {
        match self {
            Denial::BadRequest(_) => "bad_request".into(),
            Denial::Policy => "policy".into(),
            Denial::IpLiteral => "ip_literal".into(),
            Denial::NonPublic(c) => format!("non_public:{c}"),
            Denial::Unresolved => "unresolved".into(),
            Denial::SniMismatch(_) => "sni_mismatch".into(),
            Denial::ConnectionLimit => "connection_limit".into(),
            Denial::UpstreamTls(_) => "upstream_tls".into(),
        }
    }

    pub fn reason(&self) -> String {
        match self {
            Denial::BadRequest(r) => r.clone(),
            Denial::Policy => "no rule allows this destination".into(),
            Denial::IpLiteral => "IP addresses are refused unless a rule names them".into(),
            Denial::NonPublic(c) => format!("the name resolves to a {c} address"),
            Denial::Unresolved => "the name does not resolve".into(),
            Denial::SniMismatch(n) => format!("the TLS server name ({n}) is not the CONNECT host"),
            Denial::ConnectionLimit => "the sandbox's connection limit is reached".into(),
            Denial::UpstreamTls(e) => format!("the host's TLS could not be verified: {e}"),
        }
    }
}

/// What the proxy reports (the service records each on the ledger).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EgressEvent {
    Allowed {
        /// Numbers the sandbox's connections from 1 (links allowed and closed).
        connection: u64,
        dest: Destination,
        rule: String,
        addr: SocketAddr,
        decided_by: Option<String>,
    },
    Denied {
        connection: u64,
        /// The destination as asked (absent when the request was unreadable).
        dest: Option<Destination>,
        rule: Option<String>,
        denial: Denial,
        decided_by: Option<String>,
    },
    Closed {
        connection: u64,
        dest: Destination,
        bytes_out: u64,
        bytes_in: u64,
        duration_ms: u64,
    },
    /// A brokered secret's placeholder in a request (substituted or not).
    Brokered {
        connection: u64,
        dest: Destination,
        sighting: crate::broker::Sighting,
    },
    /// Echoes of a brokered secret's value masked in what came back.
    Masked {
        connection: u64,
        secret: String,
        count: u64,
    },
    /// The sandbox's byte limit ended a connection.
    ByteLimit {
        connection: u64,
        dest: Destination,
        limit: u64,
    },
}

/// Records events; returns the ledger position of the record (shown in 403s).
pub trait Recorder: Send + Sync {
    fn record(&self, event: EgressEvent) -> BoxFuture<'_, Option<u64>>;
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections over the sandbox's life.
    pub max_connections: u64,
    /// Bytes both ways over the sandbox's life.
    pub max_bytes: u64,
    /// Time to read the request head and to connect out.
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 256,
            max_bytes: 1 << 30,
            timeout: Duration::from_secs(10),
        }
    }
}

/// One sandbox's proxy.
pub struct Proxy {
    pub policy: Arc<dyn Policy>,
    pub resolver: Arc<dyn Resolver>,
    pub recorder: Arc<dyn Recorder>,
    pub limits: Limits,
    connections: AtomicU64,
    bytes: Arc<AtomicU64>,
    /// Connections refused over the limit after the first (not recorded one by one).
    over_limit: AtomicU64,
    /// Where the first refusal over the limit was recorded.
    over_limit_position: std::sync::Mutex<Option<u64>>,
    /// Fired when the sandbox ended: open connections end (and are recorded).
    closing: tokio_util::sync::CancellationToken,
    /// Secrets brokered at the edge (none: nothing is intercepted).
    broker: Option<Arc<crate::broker::Broker>>,
}

impl Proxy {
    pub fn new(
        policy: Arc<dyn Policy>,
        resolver: Arc<dyn Resolver>,
        recorder: Arc<dyn Recorder>,
        limits: Limits,
    ) -> Proxy {
        Proxy {
            policy,
            resolver,
            recorder,
            limits,
            connections: AtomicU64::new(0),
            bytes: Arc::new(AtomicU64::new(0)),
            over_limit: AtomicU64::new(0),
            over_limit_position: std::sync::Mutex::new(None),
            closing: tokio_util::sync::CancellationToken::new(),
            broker: None,
        }
    }

    /// Brokers `broker`'s secrets on this proxy's connections.
    pub fn with_broker(mut self, broker: Arc<crate::broker::Broker>) -> Proxy {
        self.broker = Some(broker);
        self
    }

    /// Ends every open connection (each records its close with the bytes it
    /// carried) and refuses new ones: the sandbox is gone.
    pub fn close(&self) {
        self.closing.cancel();
    }

    /// Whether [`Proxy::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.closing.is_cancelled()
    }

    /// Connections refused over the connection limit after the first one
    /// (which was recorded): a hostile program's flood costs the ledger one
    /// record, and the service records this count once, when the sandbox ends.
    pub fn refused_over_limit(&self) -> u64 {
        self.over_limit.load(Ordering::Relaxed)
    }

    /// Bytes carried so far (both ways, all connections).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    async fn deny<S: AsyncWrite + Unpin>(
        &self,
        client: &mut S,
        connection: u64,
        dest: Option<Destination>,
        verdict: Option<&Verdict>,
        denial: Denial,
    ) {
        let rule = verdict.map(|v| v.rule.clone());
        let position =
            if denial == Denial::ConnectionLimit && connection > self.limits.max_connections + 1 {
                // Past the first refusal over the limit: counted, not recorded.
                self.over_limit.fetch_add(1, Ordering::Relaxed);
                self.over_limit_position.lock().ok().and_then(|p| *p)
            } else {
                let p = self
                    .recorder
                    .record(EgressEvent::Denied {
                        connection,
                        dest: dest.clone(),
                        rule: rule.clone(),
                        denial: denial.clone(),
                        decided_by: verdict.and_then(|v| v.decided_by.clone()),
                    })
                    .await;
                if denial == Denial::ConnectionLimit
                    && let Ok(mut first) = self.over_limit_position.lock()
                {
                    *first = p;
                }
                p
            };
        let body = format!(
            "glassbox egress: denied\nhost: {}\nrule: {}\nreason: {}\nledger position: {}\n",
            dest.map_or_else(|| "-".into(), |d| d.to_string()),
            rule.as_deref().unwrap_or("none"),
            denial.reason(),
            position.map_or_else(|| "not recorded".into(), |p| p.to_string()),
        );
        let status = match denial {
            Denial::BadRequest(_) => "400 Bad Request",
            _ => "403 Forbidden",
        };
        let reply = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = client.write_all(reply.as_bytes()).await;
        let _ = client.shutdown().await;
    }

    /// Serves one client connection to its end.
    pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(&self, mut client: S) {
        if self.is_closed() {
            return;
        }
        // Every connection counts, whatever it turns out to be.
        let connection = self.connections.fetch_add(1, Ordering::SeqCst) + 1;
        // The head, bounded in size and time.
        let (mut buf, head_len) = match read_head(&mut client, self.limits.timeout).await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                return self
                    .deny(&mut client, connection, None, None, Denial::BadRequest(e))
                    .await;
            }
            Err(_) => {
                return self
                    .deny(
                        &mut client,
                        connection,
                        None,
                        None,
                        Denial::BadRequest("no request in time".into()),
                    )
                    .await;
            }
        };
        let request = match parse_head(&buf[..head_len]) {
            Ok(r) => r,
            Err(e) => {
                return self
                    .deny(
                        &mut client,
                        connection,
                        None,
                        None,
                        Denial::BadRequest(e.to_string()),
                    )
                    .await;
            }
        };
        let early = buf.split_off(head_len);
        let dest = match &request {
            Request::Connect(d) | Request::Forward { dest: d, .. } => d.clone(),
        };
        if connection > self.limits.max_connections {
            return self
                .deny(
                    &mut client,
                    connection,
                    Some(dest),
                    None,
                    Denial::ConnectionLimit,
                )
                .await;
        }
        let verdict = self.policy.decide(&dest);
        if !verdict.allow {
            return self
                .deny(
                    &mut client,
                    connection,
                    Some(dest),
                    Some(&verdict),
                    Denial::Policy,
                )
                .await;
        }
        // Resolve here (never in the sandbox) and pin the first answer.
        let addrs: Vec<SocketAddr> = match dest.ip() {
            Some(ip) => {
                if !verdict.allow_private && classify(ip) != AddrClass::Public {
                    return self
                        .deny(
                            &mut client,
                            connection,
                            Some(dest),
                            Some(&verdict),
                            Denial::IpLiteral,
                        )
                        .await;
                }
                vec![SocketAddr::new(ip, dest.port)]
            }
            None => match self.resolver.resolve(&dest).await {
                Ok(a) if !a.is_empty() => a,
                _ => {
                    return self
                        .deny(
                            &mut client,
                            connection,
                            Some(dest),
                            Some(&verdict),
                            Denial::Unresolved,
                        )
                        .await;
                }
            },
        };
        if !verdict.allow_private
            && let Some(bad) = addrs
                .iter()
                .map(|a| classify(a.ip()))
                .find(|c| *c != AddrClass::Public)
        {
            return self
                .deny(
                    &mut client,
                    connection,
                    Some(dest),
                    Some(&verdict),
                    Denial::NonPublic(bad.as_str()),
                )
                .await;
        }
        let addr = addrs[0];
        if let (Request::Connect(_), Some(b)) = (&request, &self.broker)
            && b.intercepts(&dest)
        {
            let b = b.clone();
            return self
                .intercept(client, early, connection, dest, &verdict, addr, &b)
                .await;
        }
        if let (Request::Forward { origin_head, .. }, Some(b)) = (&request, &self.broker)
            && b.mentioned(origin_head)
        {
            // Plain HTTP: a placeholder goes as it is (a value never travels
            // in clear text); what was seen is reported.
            let (_, seen) = b.rewrite(origin_head, &dest, false);
            for sighting in seen {
                self.recorder
                    .record(EgressEvent::Brokered {
                        connection,
                        dest: dest.clone(),
                        sighting,
                    })
                    .await;
            }
        }
        // For a tunnel, the TLS server name (if any) must be the CONNECT host.
        let mut first = early;
        if matches!(request, Request::Connect(_)) {
            let _ = client
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await;
            // A client that speaks first sends its ClientHello at once; one
            // that waits for the server is let through after a short wait.
            let peek = tokio::time::timeout(self.limits.timeout.min(PEEK_WAIT), async {
                // Enough of the first record to hold a ClientHello.
                while first.len() < 5
                    || (first[0] == 0x16 && first.len() < 5 + record_len(&first).min(MAX_HEAD))
                {
                    let mut chunk = [0u8; 4096];
                    match client.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => first.extend_from_slice(&chunk[..n]),
                    }
                    if first.len() > MAX_HEAD {
                        break;
                    }
                }
            })
            .await;
            if peek.is_err() && first.first() == Some(&0x16) {
                // A TLS record that does not arrive in time is not checked: refused.
                return self
                    .deny_tunnel(
                        connection,
                        Some(dest),
                        Some(&verdict),
                        Denial::BadRequest("an incomplete TLS ClientHello".into()),
                    )
                    .await;
            }
            match client_hello_sni(&first) {
                Ok(Some(name)) if name != dest.host => {
                    return self
                        .deny_tunnel(
                            connection,
                            Some(dest),
                            Some(&verdict),
                            Denial::SniMismatch(name),
                        )
                        .await;
                }
                Err(e) => {
                    return self
                        .deny_tunnel(
                            connection,
                            Some(dest),
                            Some(&verdict),
                            Denial::BadRequest(e.to_string()),
                        )
                        .await;
                }
                _ => {}
            }
        }
        let upstream = match tokio::time::timeout(self.limits.timeout, TcpStream::connect(addr))
            .await
        {
            Ok(Ok(s)) => s,
            _ => {
                if let Request::Forward { .. } = request {
                    let _ = client
                        .write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .await;
                }
                return;
            }
        };
        self.allowed(connection, &dest, &verdict, addr).await;
        let started = Instant::now();
        let mut prefix = match request {
            Request::Forward { origin_head, .. } => origin_head,
            Request::Connect(_) => Vec::new(),
        };
        prefix.extend_from_slice(&first);
        let (out, inn, breached) = self.pipe(client, upstream, prefix, None).await;
        self.finish(connection, dest, out, inn, breached, started)
            .await;
    }

    /// A tunnel refused after `200` was sent: recorded, the connection dropped.
    async fn deny_tunnel(
        &self,
        connection: u64,
        dest: Option<Destination>,
        verdict: Option<&Verdict>,
        denial: Denial,
    ) {
        self.recorder
            .record(EgressEvent::Denied {
                connection,
                dest,
                rule: verdict.map(|v| v.rule.clone()),
                denial,
                decided_by: verdict.and_then(|v| v.decided_by.clone()),
            })
            .await;
    }

    /// Copies both ways until either side ends, the byte limit is reached or
    /// the proxy closes, masking brokered values in what comes back. Returns
    /// (bytes out, bytes in, limit reached).
    async fn pipe<C, U>(
        &self,
        client: C,
        upstream: U,
        prefix: Vec<u8>,
        mut mask: Option<&mut crate::broker::Mask>,
    ) -> (u64, u64, bool)
    where
        C: AsyncRead + AsyncWrite + Unpin,
        U: AsyncRead + AsyncWrite + Unpin,
    {
        let (mut cr, mut cw) = tokio::io::split(client);
        let (mut ur, mut uw) = tokio::io::split(upstream);
        let limit = self.limits.max_bytes;
        let total = self.bytes.clone();
        let over = |n: u64| total.fetch_add(n, Ordering::SeqCst) + n > limit;
        let (sent, got) = (AtomicU64::new(0), AtomicU64::new(0));
        let up = async {
            if !prefix.is_empty() {
                if over(prefix.len() as u64) {
                    return true;
                }
                if uw.write_all(&prefix).await.is_err() {
                    return false;
                }
                sent.fetch_add(prefix.len() as u64, Ordering::Relaxed);
            }
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match cr.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let _ = uw.shutdown().await;
                        return false;
                    }
                    Ok(n) => {
                        if over(n as u64) {
                            return true;
                        }
                        if uw.write_all(&buf[..n]).await.is_err() {
                            return false;
                        }
                        sent.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            }
        };
        let down = async {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match ur.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        if let Some(m) = mask.as_deref_mut() {
                            let _ = cw.write_all(&m.finish()).await;
                        }
                        let _ = cw.shutdown().await;
                        return false;
                    }
                    Ok(n) => {
                        if over(n as u64) {
                            return true;
                        }
                        let wrote = match mask.as_deref_mut() {
                            Some(m) => cw.write_all(&m.push(&buf[..n])).await,
                            None => cw.write_all(&buf[..n]).await,
                        };
                        if wrote.is_err() {
                            return false;
                        }
                        got.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            }
        };
        tokio::pin!(up, down);
        // Either direction breaching the limit ends both; a clean end of one
        // waits for the other; the sandbox's end ends both.
        let (mut up_done, mut down_done, mut breached) = (false, false, false);
        while !(breached || (up_done && down_done)) {
            tokio::select! {
                b = &mut up, if !up_done => { breached |= b; up_done = true; }
                b = &mut down, if !down_done => { breached |= b; down_done = true; }
                _ = self.closing.cancelled() => break,
            }
        }
        (
            sent.load(Ordering::Relaxed),
            got.load(Ordering::Relaxed),
            breached,
        )
    }

    /// A tunnel to a host a brokered secret goes to: the program's TLS ends
    /// here (a certificate from the sandbox's CA), the real host's is
    /// verified, one request's head has its placeholders replaced, and echoes
    /// of the values are masked on the way back.
    #[allow(clippy::too_many_arguments)]
    async fn intercept<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut client: S,
        early: Vec<u8>,
        connection: u64,
        dest: Destination,
        verdict: &Verdict,
        addr: SocketAddr,
        broker: &crate::broker::Broker,
    ) {
        if !early.is_empty() {
            return self
                .deny(
                    &mut client,
                    connection,
                    Some(dest),
                    Some(verdict),
                    Denial::BadRequest("data was sent before the tunnel was established".into()),
                )
                .await;
        }
        let refuse = |denial: Denial| {
            self.deny_tunnel(connection, Some(dest.clone()), Some(verdict), denial)
        };
        let acceptor = match broker.acceptor(&dest.host) {
            Ok(a) => tokio_rustls::TlsAcceptor::from(a),
            Err(e) => return refuse(Denial::UpstreamTls(e.to_string())).await,
        };
        if client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
        let mut tls = match tokio::time::timeout(self.limits.timeout, acceptor.accept(client)).await
        {
            Ok(Ok(t)) => t,
            _ => {
                return refuse(Denial::BadRequest(
                    "the TLS handshake with the program failed".into(),
                ))
                .await;
            }
        };
        let sni = tls.get_ref().1.server_name().map(str::to_owned);
        if sni.as_deref() != Some(dest.host.as_str()) {
            return refuse(Denial::SniMismatch(sni.unwrap_or_else(|| "none".into()))).await;
        }
        let (buf, head_len) = match read_head(&mut tls, self.limits.timeout).await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => return refuse(Denial::BadRequest(e)).await,
            Err(_) => return refuse(Denial::BadRequest("no request in time".into())).await,
        };
        let upstream = match tokio::time::timeout(self.limits.timeout, async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let name = crate::broker::Broker::server_name(&dest.host)
                .ok_or_else(|| "not a server name".to_owned())?;
            broker
                .connector()
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())
        })
        .await
        {
            Ok(Ok(u)) => u,
            Ok(Err(e)) => return refuse(Denial::UpstreamTls(e)).await,
            Err(_) => return refuse(Denial::UpstreamTls("no answer in time".into())).await,
        };
        self.allowed(connection, &dest, verdict, addr).await;
        let (mut prefix, seen) = broker.rewrite(&buf[..head_len], &dest, true);
        for sighting in seen {
            self.recorder
                .record(EgressEvent::Brokered {
                    connection,
                    dest: dest.clone(),
                    sighting,
                })
                .await;
        }
        prefix.extend_from_slice(&buf[head_len..]);
        let mut mask = crate::broker::Mask::new(broker.masks(&dest));
        let started = Instant::now();
        let (out, inn, breached) = self.pipe(tls, upstream, prefix, Some(&mut mask)).await;
        let mut masked: Vec<(String, u64)> = mask.counts.into_iter().collect();
        masked.sort();
        for (secret, count) in masked {
            self.recorder
                .record(EgressEvent::Masked {
                    connection,
                    secret,
                    count,
                })
                .await;
        }
        self.finish(connection, dest, out, inn, breached, started)
            .await;
    }

    /// Records that connection `connection` to `dest` is through (at `addr`).
    async fn allowed(
        &self,
        connection: u64,
        dest: &Destination,
        verdict: &Verdict,
        addr: SocketAddr,
    ) {
        self.recorder
            .record(EgressEvent::Allowed {
                connection,
                dest: dest.clone(),
                rule: verdict.rule.clone(),
                addr,
                decided_by: verdict.decided_by.clone(),
            })
            .await;
    }

    /// Records a connection's end (and a byte-limit breach).
    async fn finish(
        &self,
        connection: u64,
        dest: Destination,
        out: u64,
        inn: u64,
        breached: bool,
        started: Instant,
    ) {
        if breached {
            self.recorder
                .record(EgressEvent::ByteLimit {
                    connection,
                    dest: dest.clone(),
                    limit: self.limits.max_bytes,
                })
                .await;
        }
        self.recorder
            .record(EgressEvent::Closed {
                connection,
                dest,
                bytes_out: out,
                bytes_in: inn,
                duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            })
            .await;
    }
}

/// Reads a request head (at most [`MAX_HEAD`] bytes, within `wait`): the
/// bytes read and where the head ends in them (what follows is early data).
async fn read_head<R: AsyncRead + Unpin>(
    r: &mut R,
    wait: Duration,
) -> Result<Result<(Vec<u8>, usize), String>, tokio::time::error::Elapsed> {
    let mut buf = Vec::with_capacity(1024);
    tokio::time::timeout(wait, async {
        loop {
            if let Some(end) = head_end(&buf) {
                return Ok(end);
            }
            if buf.len() >= MAX_HEAD {
                return Err(RequestError::TooLong.to_string());
            }
            let mut chunk = [0u8; 2048];
            let want = chunk.len().min(MAX_HEAD + 4 - buf.len());
            match r.read(&mut chunk[..want]).await {
                Ok(0) | Err(_) => return Err("the connection closed before a request".into()),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .map(|r| r.map(|end| (buf, end)))
}

/// The length of the TLS record starting `buf` (0 if not known yet).
fn record_len(buf: &[u8]) -> usize {
    match buf.get(3..5) {
        Some(b) => usize::from(u16::from_be_bytes([b[0], b[1]])),
        None => 0,
    }
}
