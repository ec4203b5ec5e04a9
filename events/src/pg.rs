//! PostgreSQL pools as Glassbox opens them.
//!
//! Why this exists: sqlx 0.9.0 leaves Nagle's algorithm on for its TCP
//! connections (upstream issue transact-rs/sqlx#4335; the fix, #4336, is not
//! in a release yet). A message sqlx writes in two pieces then waits for the
//! server's delayed ACK, ~40 ms on a statement that takes 1 ms: `glassbox bench
//! submit` fell from 239 submissions/s with one caller to 87/s with eight, and
//! its raw-ledger baseline to a 48 ms median. Until a release carries the fix,
//! every pool turns Nagle off on its connections right after connecting.
//!
//! sqlx does not hand out its socket, so the hook duplicates this process's
//! socket descriptors (`pidfd_getfd`, safe code through rustix; never other
//! files, whose POSIX locks closing a duplicate would drop), keeps the TCP sockets
//! whose peer is the database's port, and sets `TCP_NODELAY` on each — a no-op
//! on one that has it already. If the kernel refuses (no `pidfd_getfd` before
//! Linux 5.6), connections stay as sqlx made them: slower, never wrong.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::str::FromStr as _;

/// Pool options with the `TCP_NODELAY` hook for the server `url` names.
pub fn pool_options(url: &str) -> PgPoolOptions {
    let port = PgConnectOptions::from_str(url)
        .map(|o| o.get_port())
        .unwrap_or(5432);
    PgPoolOptions::new().after_connect(move |_conn, _meta| {
        Box::pin(async move {
            if let Err(e) = nodelay_to_port(port) {
                tracing::debug!(error = %e, "could not turn off Nagle on database connections");
            }
            Ok(())
        })
    })
}

/// Sets `TCP_NODELAY` on this process's TCP sockets connected to `port`;
/// returns how many it set.
pub fn nodelay_to_port(port: u16) -> std::io::Result<usize> {
    use rustix::process::{PidfdFlags, PidfdGetfdFlags, getpid, pidfd_getfd, pidfd_open};
    let pidfd = pidfd_open(getpid(), PidfdFlags::empty())?;
    let mut set = 0;
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let entry = entry?;
        // Sockets only: closing a duplicate of a regular file would drop this
        // process's POSIX (fcntl) locks on it.
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"));
        if !is_socket {
            continue;
        }
        let Some(n) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        // The descriptor may be gone already, or not be ours to duplicate.
        let Ok(fd) = pidfd_getfd(&pidfd, n, PidfdGetfdFlags::empty()) else {
            continue;
        };
        let to_db = rustix::net::getpeername(&fd)
            .ok()
            .flatten()
            .and_then(|a| std::net::SocketAddr::try_from(a).ok())
            .is_some_and(|a| a.port() == port);
        if to_db && rustix::net::sockopt::set_tcp_nodelay(&fd, true).is_ok() {
            set += 1;
        }
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn nagle_is_turned_off_on_sockets_to_the_port_and_only_those() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listen");
        let port = listener.local_addr().expect("addr").port();
        let other = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listen");
        let to_port = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let elsewhere = tokio::net::TcpStream::connect(other.local_addr().expect("addr"))
            .await
            .expect("connect");
        assert!(!to_port.nodelay().expect("get"));
        let set = nodelay_to_port(port).expect("set");
        // Exactly the one client socket (the listener has no peer; the
        // accepted end was never accepted into this process).
        assert_eq!(set, 1);
        assert!(to_port.nodelay().expect("get"));
        assert!(!elsewhere.nodelay().expect("get"));
    }
}
