//! `glassbox-session-agent forward LISTEN SOCKET [--services SOCKET] -- COMMAND [ARGS…]`: inside a
//! sandbox with egress, relays every TCP connection made to `LISTEN` (the
//! sandbox's own loopback, e.g. `127.0.0.1:3128`, what `HTTP(S)_PROXY` names)
//! to the host Unix socket `SOCKET` (the runner's egress proxy for this
//! sandbox, reached through runsc's `--host-uds=open`), and runs `COMMAND`
//! until it exits, exiting with its status (128 + signal if it was killed).
//!
//! It decides nothing: the proxy on the host does. It is code inside the
//! sandbox like the program, so the proxy trusts nothing it sends.
//!
//! With `--services SOCKET` (a session's service mode) it also keeps a few
//! connections open *to* that host socket, since the host cannot connect into
//! the sandbox: the runner takes one, writes `PORT <n>`, and the forwarder
//! connects to the sandbox's `127.0.0.1:<n>`, answers `OK` (or `ERR`) and
//! relays the bytes both ways; each connection offered is used once and
//! replaced.

use std::io::Write as _;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt as _;
use std::process::ExitCode;

fn relay(tcp: TcpStream, socket: &str) {
    let Ok(unix) = UnixStream::connect(socket) else {
        let _ = tcp.shutdown(Shutdown::Both);
        return;
    };
    relay_streams(tcp, unix);
}

/// Connections offered to the runner's service socket at once.
const OFFERS: usize = 2;

/// One offered connection: waits for `PORT <n>`, connects, relays. `false`:
/// it was closed unused.
fn offer(socket: &str) -> std::io::Result<bool> {
    use std::io::Read as _;
    let mut unix = UnixStream::connect(socket)?;
    // The request line, byte by byte (at most 16): nothing else is read ahead.
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\n") {
        if line.len() >= 16 || unix.read(&mut b)? == 0 {
            return Ok(false);
        }
        line.push(b[0]);
    }
    std::thread::spawn(move || {
        let port = std::str::from_utf8(&line)
            .ok()
            .and_then(|l| l.trim().strip_prefix("PORT "))
            .and_then(|p| p.parse::<u16>().ok());
        let Some(port) = port else {
            let _ = unix.write_all(b"ERR bad request\n");
            return;
        };
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(tcp) => {
                if unix.write_all(b"OK\n").is_ok() {
                    relay_streams(tcp, unix);
                }
            }
            Err(_) => {
                let _ = unix.write_all(b"ERR nothing listens on that port\n");
            }
        }
    });
    Ok(true)
}

/// Relays both ways between a TCP and a Unix stream until both ends close.
fn relay_streams(tcp: TcpStream, unix: UnixStream) {
    let (Ok(mut tcp_r), Ok(mut unix_w)) = (tcp.try_clone(), unix.try_clone()) else {
        return;
    };
    let (mut tcp_w, mut unix_r) = (tcp, unix);
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut tcp_r, &mut unix_w);
        let _ = unix_w.shutdown(Shutdown::Write);
    });
    let _ = std::io::copy(&mut unix_r, &mut tcp_w);
    let _ = tcp_w.shutdown(Shutdown::Write);
    let _ = up.join();
}

pub fn main(args: &[String]) -> ExitCode {
    let usage = || {
        let _ = writeln!(
            std::io::stderr(),
            "usage: glassbox-session-agent forward LISTEN SOCKET [--services SOCKET] -- COMMAND [ARGS...]"
        );
        ExitCode::from(2)
    };
    let (Some(listen), Some(socket)) = (args.first(), args.get(1)) else {
        return usage();
    };
    let (services, at) = match args.get(2).map(String::as_str) {
        Some("--services") => (args.get(3).cloned(), 4),
        _ => (None, 2),
    };
    if args.get(at).map(String::as_str) != Some("--") {
        return usage();
    }
    let Some((program, rest)) = args[at + 1..].split_first() else {
        return usage();
    };
    if let Some(services) = services {
        for _ in 0..OFFERS {
            let services = services.clone();
            std::thread::spawn(move || {
                loop {
                    if !matches!(offer(&services), Ok(true)) {
                        // The runner is not listening (yet, or any more), or
                        // did not want this one.
                        std::thread::sleep(std::time::Duration::from_millis(200));
                    }
                }
            });
        }
    }
    let listener = match TcpListener::bind(listen) {
        Ok(l) => l,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "glassbox egress forwarder: {listen}: {e}"
            );
            return ExitCode::from(2);
        }
    };
    let socket = socket.clone();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let socket = socket.clone();
            std::thread::spawn(move || relay(tcp, &socket));
        }
    });
    match std::process::Command::new(program).args(rest).status() {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1)),
            (None, Some(sig)) => ExitCode::from(u8::try_from(128 + sig).unwrap_or(255)),
            _ => ExitCode::from(1),
        },
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "glassbox egress forwarder: {program}: {e}"
            );
            ExitCode::from(127)
        }
    }
}
