//! Moving an allowed connection's bytes: socket → pipe → socket with `splice(2)`, counted
//! against the job's byte cap.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::TcpStream;

use super::State;

/// Copies both ways until either side closes, counting bytes against the job's cap. The
/// bytes move socket → pipe → socket with `splice(2)`: the gateway never copies them through
/// its own memory (what was read while sniffing goes first, written plainly).
pub(super) async fn relay(
    state: &State,
    conn: &mut TcpStream,
    upstream: &mut TcpStream,
    head: &[u8],
) -> (u64, u64) {
    let out = AtomicU64::new(0);
    let inn = AtomicU64::new(0);
    let count = |n: usize, dir: &AtomicU64| -> bool {
        dir.fetch_add(n as u64, Ordering::Relaxed);
        let total = state.bytes.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        match state.policy.max_bytes {
            Some(max) if total > max => {
                state.hit_limit(format!(
                    "more than {} MiB through the gateway (max_bytes_mb)",
                    max >> 20
                ));
                false
            }
            _ => true,
        }
    };
    let (conn, upstream) = (&*conn, &*upstream);
    let up = async {
        if !head.is_empty()
            && (!count(head.len(), &out) || write_all(upstream, head).await.is_err())
        {
            return;
        }
        if splice_all(conn, upstream, |n| count(n, &out)).await.is_ok() {
            let _ = rustix::net::shutdown(upstream, rustix::net::Shutdown::Write);
        }
    };
    let down = async {
        if splice_all(upstream, conn, |n| count(n, &inn)).await.is_ok() {
            let _ = rustix::net::shutdown(conn, rustix::net::Shutdown::Write);
        }
    };
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        _ = state.limit.cancelled() => {}
    }
    (out.into_inner(), inn.into_inner())
}

async fn write_all(to: &TcpStream, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        to.writable().await?;
        match to.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// How much one splice moves at most (the pipe is grown to this where the kernel lets it).
const SPLICE_CHUNK: usize = 1 << 20;

/// Moves everything `from` sends to `to` through a pipe until `from` ends (`Ok`) or `admit`
/// refuses more (`Err`).
async fn splice_all(
    from: &TcpStream,
    to: &TcpStream,
    admit: impl Fn(usize) -> bool,
) -> std::io::Result<()> {
    use rustix::pipe::{PipeFlags, SpliceFlags, splice};
    use tokio::io::Interest;
    let (pr, pw) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
    let _ = rustix::pipe::fcntl_setpipe_size(&pw, SPLICE_CHUNK);
    let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
    let would_block = |e: &std::io::Error| e.kind() == std::io::ErrorKind::WouldBlock;
    loop {
        let n = loop {
            from.readable().await?;
            match from.try_io(Interest::READABLE, || {
                Ok(splice(from, None, &pw, None, SPLICE_CHUNK, flags)?)
            }) {
                Ok(n) => break n,
                Err(e) if would_block(&e) => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            return Ok(());
        }
        if !admit(n) {
            return Err(std::io::Error::other("over the byte cap"));
        }
        let mut left = n;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                Ok(splice(&pr, None, to, None, left, flags)?)
            }) {
                Ok(m) => left -= m,
                Err(e) if would_block(&e) => continue,
                Err(e) => return Err(e),
            }
        }
    }
}
