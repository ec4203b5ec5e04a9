//! The egress proxy core (issue 15, in progress): what a sandbox's only
//! network peer does with each connection, independent of how the bytes get
//! from the sandbox to it (a host Unix socket reached through runsc's
//! `--host-uds=open`; docs/runsc-recipe.md §13).
//!
//! Every connection is decided on its own: the destination comes from the
//! request (`CONNECT host:port`, or an absolute-form URI whose `Host` header
//! must agree; for TLS the ClientHello's SNI must agree too), the [`Policy`]
//! answers for that destination, names are resolved here — never in the
//! sandbox — and the first answer is pinned for the connection, and an
//! address that is not public (loopback, private, link-local with the
//! metadata service, …) is refused unless the rule that allowed the name says
//! so. Every decision, every limit breach and every close is handed to the
//! [`Recorder`] (the ledger, in the service), and a refusal answers the
//! program with a readable 403 naming the host, the rule and the ledger
//! position of the denial.
//!
//! Secrets can be brokered at the edge ([`broker`]): the sandbox holds a
//! placeholder and the proxy puts the value in request headers to the
//! secret's hosts only, over TLS it terminates with the sandbox's own CA and
//! re-originates verified. The runner wires a proxy to each sandbox and its
//! ledger (`glassbox-sandbox-runner`'s `egress`). Not built yet: service mode.

pub mod addr;
pub mod broker;
pub mod proxy;
pub mod request;
pub mod testing;

pub use addr::{AddrClass, classify};
pub use broker::{Broker, BrokerError, Brokered, Sighting};
pub use proxy::{
    Denial, EgressEvent, Limits, Policy, Proxy, Recorder, Resolver, StaticHosts, SystemResolver,
    Verdict,
};
pub use request::{Destination, RequestError};
