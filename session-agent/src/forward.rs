//! `glassbox-session-agent forward LISTEN SOCKET -- COMMAND [ARGS…]`: inside a
//! sandbox with egress, relays every TCP connection made to `LISTEN` (the
//! sandbox's own loopback, e.g. `127.0.0.1:3128`, what `HTTP(S)_PROXY` names)
//! to the host Unix socket `SOCKET` (the runner's egress proxy for this
//! sandbox, reached through runsc's `--host-uds=open`), and runs `COMMAND`
//! until it exits, exiting with its status (128 + signal if it was killed).
//!
//! It decides nothing: the proxy on the host does. It is code inside the
//! sandbox like the program, so the proxy trusts nothing it sends.

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
            "usage: glassbox-session-agent forward LISTEN SOCKET -- COMMAND [ARGS...]"
        );
        ExitCode::from(2)
    };
    let (Some(listen), Some(socket), Some("--")) =
        (args.first(), args.get(1), args.get(2).map(String::as_str))
    else {
        return usage();
    };
    let Some((program, rest)) = args[3..].split_first() else {
        return usage();
    };
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
