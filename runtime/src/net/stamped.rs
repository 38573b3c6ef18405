//! Reads that also return the kernel's receive timestamp of the data (`SO_TIMESTAMPNS`).
//!
//! The kernel stamps a segment when the network stack takes it in, before any thread is
//! woken to read it. A stamp read in user space after `read` returns also carries the
//! reader's wake-up latency, which depends on how long its thread slept: on an idle host
//! that is tens of microseconds more for a server that waited 20 ms than for a client that
//! waited 50 µs, and the time protocol would see it as path asymmetry. The kernel's stamp
//! is still never early (the data had arrived), so the bound stays valid.
//!
//! For TCP the stamp is that of the last segment a read consumed: for every byte it
//! returns, no earlier than its arrival.
//!
//! Stamps are asked for only on connections that carry the time protocol. Once any socket
//! asks, the kernel stamps every packet the host receives, and a stamped read is a
//! `recvmsg` with a control buffer where a plain read would do: on loopback that cost a
//! replicated Put or Get about a microsecond of the servers' CPU (docs/performance.md).

use std::io;
use std::os::fd::AsRawFd;

use mio::net::TcpStream;
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};
use nix::sys::time::TimeSpec;

/// Asks the kernel to stamp what `stream` receives. Best effort: without stamps, reads
/// fall back to the clock read after they return.
pub(crate) fn enable(stream: &TcpStream) -> io::Result<()> {
    setsockopt(stream, sockopt::ReceiveTimestampns, &true).map_err(io::Error::from)
}

/// Space for one `SO_TIMESTAMPNS` control message.
pub(crate) fn control_buffer() -> Vec<u8> {
    nix::cmsg_space!(TimeSpec)
}

/// Reads into `buf`: the byte count and, if the kernel sent one, the receive timestamp in
/// nanoseconds since the Unix epoch on the host's real-time clock. Without a `control`
/// buffer, a plain read (no stamp).
pub(crate) fn read(
    stream: &TcpStream,
    buf: &mut [u8],
    control: Option<&mut [u8]>,
) -> io::Result<(usize, Option<i64>)> {
    let Some(control) = control else {
        let mut reader = stream;
        return io::Read::read(&mut reader, buf).map(|len| (len, None));
    };
    let mut iov = [io::IoSliceMut::new(buf)];
    let message = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(control),
        MsgFlags::empty(),
    )
    .map_err(io::Error::from)?;
    let mut stamp = None;
    if let Ok(messages) = message.cmsgs() {
        for control in messages {
            if let ControlMessageOwned::ScmTimestampns(spec) = control {
                let ns = i128::from(spec.tv_sec()) * 1_000_000_000 + i128::from(spec.tv_nsec());
                stamp = i64::try_from(ns).ok();
            }
        }
    }
    Ok((message.bytes, stamp))
}
