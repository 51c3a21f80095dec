//! Readiness and shutdown told to systemd (`Type=notify`) with the `sd_notify`
//! protocol: one datagram of `KEY=value` lines to the socket `$NOTIFY_SOCKET` names (a
//! path, or an abstract name after `@`). Without that variable nothing is sent.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::net::UnixDatagram;

/// The variable systemd sets for a `Type=notify` service.
const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Sends `state` (`"READY=1\nSTATUS=..."`) to systemd, if it asked for it; a failure is
/// logged, never fatal.
pub(crate) fn notify(state: &str) {
    let Some(socket) = std::env::var_os(NOTIFY_SOCKET) else { return };
    if let Err(e) = send(&socket, state) {
        tracing::warn!(error = %e, socket = %socket.to_string_lossy(), "cannot notify systemd");
    }
}

fn send(socket: &OsStr, state: &str) -> std::io::Result<()> {
    let datagram = UnixDatagram::unbound()?;
    match socket.as_bytes().strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt as _;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            datagram.send_to_addr(state.as_bytes(), &addr)?;
        }
        None => {
            datagram.send_to(state.as_bytes(), std::path::Path::new(socket))?;
        }
    }
    Ok(())
}
