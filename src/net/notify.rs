//! Telling a service manager how zester is doing (systemd's `sd_notify` protocol, for
//! `Type=notify` units): one datagram of `KEY=VALUE` lines to the Unix socket named by
//! `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace). `zester up` says
//! `READY=1` once it is ready (after `runtime.json`) and `STOPPING=1` when it stops; the peel
//! agent says `READY=1` once it is connected. Without `$NOTIFY_SOCKET` nothing is sent.

use std::os::unix::net::UnixDatagram;

/// Why a notification could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The socket could not be reached.
    #[error("notifying the service manager at {socket}: {source}")]
    Send {
        /// `$NOTIFY_SOCKET`.
        socket: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Sends `state` (e.g. `"READY=1\nSTATUS=…"`) to `$NOTIFY_SOCKET`; `Ok(false)` when there is
/// none (not run by a service manager that asked for it).
pub fn notify(state: &str) -> Result<bool, NotifyError> {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let socket = socket.to_string_lossy().into_owned();
    let error = |source| NotifyError::Send {
        socket: socket.clone(),
        source,
    };
    let sender = UnixDatagram::unbound().map_err(error)?;
    match socket.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                .map_err(error)?;
            sender
                .send_to_addr(state.as_bytes(), &address)
                .map_err(error)?;
        }
        None => {
            sender.send_to(state.as_bytes(), &socket).map_err(error)?;
        }
    }
    Ok(true)
}

/// [`notify`], logging a failure instead of returning it: a service manager that cannot be told
/// is no reason to stop.
pub fn tell(state: &str) {
    if let Err(e) = notify(state) {
        tracing::warn!("{e}");
    }
}
