//! Readiness for systemd (`Type=notify`): one datagram to `$NOTIFY_SOCKET`,
//! the whole of the sd_notify protocol pgwarden needs, so no crate for it.
//!
//! Outside systemd the variable is absent and every call does nothing.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::OnceLock;

static SOCKET: OnceLock<Option<OsString>> = OnceLock::new();

/// Takes `NOTIFY_SOCKET` out of the environment, to be called first thing in
/// main, before any thread exists. Children must not see it: postgres, which
/// the keeper starts, speaks sd_notify too, and systemd rejects (and logs)
/// a readiness message from any process but the unit's main one.
pub fn take_socket_from_env() {
    let socket = std::env::var_os("NOTIFY_SOCKET");
    if socket.is_some() {
        std::env::remove_var("NOTIFY_SOCKET");
    }
    let _ = SOCKET.set(socket);
}

/// The role has bound its ports and runs: `systemctl start` may return.
pub fn ready() {
    send("READY=1");
}

/// The role is shutting down on a signal.
pub fn stopping() {
    send("STOPPING=1");
}

fn send(state: &str) {
    let Some(Some(socket)) = SOCKET.get() else {
        return;
    };
    if let Err(e) = send_to(socket, state) {
        tracing::warn!(error = %e, socket = ?socket, "cannot tell systemd {state}");
    }
}

/// Sends one sd_notify message; a leading `@` names an abstract socket.
pub fn send_to(socket: &OsStr, state: &str) -> std::io::Result<()> {
    let addr = match socket.as_bytes().strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name)?
        }
        None => SocketAddr::from_pathname(socket)?,
    };
    UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_reaches_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        send_to(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn a_message_reaches_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("pgwarden-notify-test-{}", std::process::id());
        let server =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        send_to(OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }
}
