//! Draining stdout/stderr concurrently with a cap: everything is read (so the
//! sandbox never blocks on a full pipe) and counted, only the first `cap` bytes kept.

use crate::result::Captured;
use tokio::io::{AsyncRead, AsyncReadExt as _};

pub async fn drain<R: AsyncRead + Unpin>(mut reader: R, cap: u64) -> Captured {
    let mut out = Captured::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.total_bytes += n as u64;
                let room = cap.saturating_sub(out.bytes.len() as u64) as usize;
                out.bytes.extend_from_slice(&buf[..n.min(room)]);
                if n > room {
                    out.truncated = true;
                }
            }
        }
    }
    out
}
