//! The channel between a runner and the agent inside a session's sandbox: the
//! agent's stdin and stdout, carrying frames — a 4-byte big-endian length and
//! a JSON message. Binary payloads travel base64-encoded inside the JSON.
//!
//! One request at a time: the runner sends a request and reads frames until
//! its answer (`Done` for an exec, after any number of `Out` chunks; a single
//! frame otherwise). `Cancel` may be sent while an exec runs.

use serde::{Deserialize, Serialize};
use std::io::{Read, Write};

/// The largest frame either side accepts (a file chunk is at most 1 MiB).
pub const MAX_FRAME: usize = 4 << 20;
/// The largest file chunk in one `Write` or `Data` frame.
pub const MAX_CHUNK: u64 = 1 << 20;
/// The most entries one `List` answers with.
pub const MAX_LIST: u32 = 10_000;

/// What an exec runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecKind {
    /// Code for the session's interpreter (state kept between execs for
    /// python and node).
    Code,
    /// A shell command (`/bin/sh -c`) in the workspace.
    Command,
}

/// Runner → agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Exec {
        id: u64,
        kind: ExecKind,
        source: String,
        #[serde(default)]
        stdin_b64: String,
        timeout_ms: u64,
        max_stdout: u64,
        max_stderr: u64,
    },
    Cancel {
        id: u64,
    },
    Write {
        path: String,
        data_b64: String,
        append: bool,
    },
    Read {
        path: String,
        offset: u64,
        len: u64,
    },
    List {
        path: String,
        max: u32,
    },
    Delete {
        path: String,
    },
    Ping,
}

/// Which output stream a chunk is from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// The end of an exec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecDone {
    pub id: u64,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub cancelled: bool,
    /// The interpreter had to be restarted: earlier state is gone.
    pub context_reset: bool,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub wall_ms: u64,
    pub error: Option<String>,
}

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub name: String,
    /// `file`, `dir`, `symlink` or `other`.
    pub kind: String,
    pub size: u64,
}

/// Agent → runner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Reply {
    Ready {
        language: String,
    },
    Out {
        id: u64,
        stream: Stream,
        data_b64: String,
    },
    Done(ExecDone),
    Ok {
        size: u64,
    },
    Data {
        data_b64: String,
        size: u64,
        eof: bool,
    },
    Entries {
        entries: Vec<Entry>,
        truncated: bool,
    },
    Error {
        message: String,
    },
    Pong,
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("the channel closed")]
    Closed,
    #[error("frame of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("frame is not a message: {0}")]
    Malformed(String),
    #[error("channel i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes a message as one frame.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let body = serde_json::to_vec(msg).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(body.len()));
    }
    let mut frame = Vec::with_capacity(body.len() + 4);
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Writes one frame (blocking).
pub fn write_frame<T: Serialize>(w: &mut impl Write, msg: &T) -> Result<(), FrameError> {
    w.write_all(&encode(msg)?)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame (blocking); `Closed` at a clean end of the stream.
pub fn read_frame<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> Result<T, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(FrameError::TooLarge(n));
    }
    let mut body = vec![0u8; n];
    r.read_exact(&mut body)?;
    decode(&body)
}

/// Parses a frame's body.
pub fn decode<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, FrameError> {
    serde_json::from_slice(body).map_err(|e| FrameError::Malformed(e.to_string()))
}

pub fn b64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

pub fn unb64(s: &str) -> Result<Vec<u8>, FrameError> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| FrameError::Malformed(format!("base64: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_refuse_oversize() {
        let req = Request::Exec {
            id: 7,
            kind: ExecKind::Code,
            source: "x = 1".into(),
            stdin_b64: String::new(),
            timeout_ms: 1000,
            max_stdout: 10,
            max_stderr: 10,
        };
        let frame = encode(&req).expect("encode");
        let back: Request = read_frame(&mut frame.as_slice()).expect("decode");
        assert_eq!(back, req);
        let mut big = (MAX_FRAME as u32 + 1).to_be_bytes().to_vec();
        big.extend_from_slice(b"{}");
        assert!(matches!(
            read_frame::<Request>(&mut big.as_slice()),
            Err(FrameError::TooLarge(_))
        ));
        assert!(matches!(
            read_frame::<Request>(&mut &b""[..]),
            Err(FrameError::Closed)
        ));
    }
}
