//! How zester's own processes connect to the appliance: creds, TLS with our CA, a name, and the
//! inbox prefix the role's permissions allow (DESIGN §4). Used by `zester up` for its callout,
//! master and system connections, and by CLI clients such as `zester status`.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The creds file cannot be used.
    #[error("cannot read creds {}: {source}", path.display())]
    Creds {
        /// The file.
        path: PathBuf,
        /// The problem.
        source: std::io::Error,
    },
    /// The server refused or could not be reached.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The URL tried.
        url: String,
        /// The client's error.
        source: async_nats::ConnectError,
    },
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `nats://host:port` (TLS is required regardless of the scheme).
    pub url: String,
    /// The CA certificate the server's certificate must chain to.
    pub ca: PathBuf,
}

/// Connection settings of one of zester's clients.
#[derive(Debug, Clone)]
pub struct ClientSpec<'a> {
    /// The creds file.
    pub creds: &'a Path,
    /// Connection name, as the server and the audit log show it.
    pub name: &'a str,
    /// Inbox prefix (must be one the role may subscribe to).
    pub inbox_prefix: &'a str,
    /// The appliance's own clients: reconnect forever (the child may restart). CLI clients
    /// give up after one reconnect attempt.
    pub long_lived: bool,
}

/// Connects over TLS with creds.
pub async fn connect(
    endpoint: &Endpoint,
    spec: &ClientSpec<'_>,
) -> Result<async_nats::Client, ConnectError> {
    // Read once now so a broken file is reported at once, then again at every (re)connect so
    // that rotated creds (`zester creds rotate`) are picked up without a restart.
    crate::home::read_creds(spec.creds).map_err(|e| ConnectError::Creds {
        path: spec.creds.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let mut options = creds_file_auth(spec.creds.to_path_buf())
        .add_root_certificates(endpoint.ca.clone())
        .require_tls(true)
        .name(spec.name)
        .custom_inbox_prefix(spec.inbox_prefix)
        .connection_timeout(Duration::from_secs(5));
    if spec.long_lived {
        options = options
            .max_reconnects(None)
            .reconnect_delay_callback(reconnect_delay);
    } else {
        options = options.max_reconnects(Some(1));
    }
    options
        .connect(endpoint.url.as_str())
        .await
        .map_err(|source| ConnectError::Connect {
            url: endpoint.url.clone(),
            source,
        })
}

/// Connect options that sign in with the creds in `path`, read again at every connect.
pub fn creds_file_auth(path: PathBuf) -> async_nats::ConnectOptions {
    async_nats::ConnectOptions::with_auth_callback(move |nonce: Vec<u8>| {
        let path = path.clone();
        async move {
            let creds = crate::home::read_creds(&path).map_err(async_nats::AuthError::new)?;
            let signature = creds
                .key()
                .sign(&nonce)
                .map_err(|e| async_nats::AuthError::new(e.to_string()))?;
            let mut auth = async_nats::Auth::new();
            auth.jwt = Some(creds.jwt().token().to_string());
            auth.signature = Some(signature);
            Ok(auth)
        }
    })
}

/// Delay before connect attempt `attempt` (async-nats asks before the very first one too):
/// none for the first, then 100 ms doubling to 1 s, so a restarted child is found quickly.
fn reconnect_delay(attempt: usize) -> Duration {
    if attempt <= 1 {
        return Duration::ZERO;
    }
    Duration::from_millis((50u64 << attempt.min(5)).min(1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_attempt_is_not_delayed() {
        assert_eq!(reconnect_delay(0), Duration::ZERO);
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        assert_eq!(reconnect_delay(2), Duration::from_millis(200));
        assert_eq!(reconnect_delay(50), Duration::from_secs(1));
    }
}
