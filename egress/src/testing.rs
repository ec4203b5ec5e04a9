//! Stand-ins for the proxy's surroundings, shared by this crate's tests, the
//! sandbox tests and `glassbox bench egress`: a resolver that sends every name
//! to the host's loopback, a recorder that keeps events in memory, and a TLS
//! ClientHello naming a server. Nothing in the service uses them.

use crate::proxy::{BoxFuture, EgressEvent, Recorder, Resolver};
use crate::request::Destination;
use std::net::SocketAddr;
use std::sync::Mutex;

/// Resolves every name to 127.0.0.1 (the test's "outside" listens there).
pub struct Loopback;

impl Resolver for Loopback {
    fn resolve<'a>(
        &'a self,
        d: &'a Destination,
    ) -> BoxFuture<'a, std::io::Result<Vec<SocketAddr>>> {
        Box::pin(async move { Ok(vec![SocketAddr::from(([127, 0, 0, 1], d.port))]) })
    }
}

/// Keeps every event; the n-th gets position `first + n`.
pub struct Memory {
    first: u64,
    events: Mutex<Vec<EgressEvent>>,
}

impl Memory {
    pub fn starting_at(first: u64) -> Memory {
        Memory {
            first,
            events: Mutex::new(Vec::new()),
        }
    }

    pub fn events(&self) -> Vec<EgressEvent> {
        self.events.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl Recorder for Memory {
    fn record(&self, e: EgressEvent) -> BoxFuture<'_, Option<u64>> {
        Box::pin(async move {
            let mut v = self.events.lock().ok()?;
            v.push(e);
            Some(self.first + v.len() as u64)
        })
    }
}

/// A minimal TLS 1.3 ClientHello record naming `name` (SNI).
pub fn client_hello(name: &str) -> Vec<u8> {
    let be16 = |n: usize| u16::try_from(n).unwrap_or(u16::MAX).to_be_bytes();
    let mut sni = vec![0u8];
    sni.extend(be16(name.len()));
    sni.extend(name.as_bytes());
    let mut list = be16(sni.len()).to_vec();
    list.extend(sni);
    let mut ext = vec![0, 0];
    ext.extend(be16(list.len()));
    ext.extend(list);
    let mut body = vec![3, 3];
    body.extend([0u8; 32]);
    body.extend([0, 0, 2, 0x13, 0x01, 1, 0]);
    body.extend(be16(ext.len()));
    body.extend(ext);
    let mut hs = vec![1];
    hs.extend(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes()[1..]);
    hs.extend(body);
    let mut rec = vec![0x16, 3, 1];
    rec.extend(be16(hs.len()));
    rec.extend(hs);
    rec
}
