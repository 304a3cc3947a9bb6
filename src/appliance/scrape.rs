//! The `/metrics` endpoint: a minimal HTTP/1.x responder on a tokio `TcpListener`, serving
//! [`Metrics`] to Prometheus (`[metrics] listen`, `zester up --metrics`).
//!
//! A scrape is one small `GET` and one answer, so a full HTTP stack would only add
//! dependencies to the appliance: each connection gets one request, read up to
//! [`MAX_REQUEST`] bytes within [`READ_TIMEOUT`], one answer (`Connection: close`) written
//! within [`WRITE_TIMEOUT`], and at most [`MAX_CONNECTIONS`] are served at once (the others
//! wait in the kernel's backlog). `GET` (and `HEAD`) `/metrics` answers 200 in the format the
//! `Accept` header asks for; any other path is 404, any other method 405. [`answer`] is pure,
//! so every status is unit-tested without a socket.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::metrics::{Format, Metrics};

/// The most bytes of a request read (its request line and headers; a scrape sends a few hundred).
pub const MAX_REQUEST: usize = 8192;
/// How long a client may take to send its request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long writing the answer may take.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How many connections are served at once.
pub const MAX_CONNECTIONS: usize = 8;

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// The address could not be bound.
    #[error("metrics listener on {addr}: {source} (set [metrics] listen or --metrics to a free HOST:PORT)")]
    Bind {
        /// The address, as configured.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// One HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// `200 OK`, `404 Not Found`…
    pub status: &'static str,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Extra header lines (`Allow: GET, HEAD`), each without its line end.
    pub headers: Vec<&'static str>,
    /// The body.
    pub body: String,
    /// Whether the body is sent (not for `HEAD`; `Content-Length` is sent either way).
    pub send_body: bool,
}

impl Answer {
    fn plain(status: &'static str, body: &str) -> Answer {
        Answer {
            status,
            content_type: "text/plain; charset=utf-8",
            headers: Vec::new(),
            body: format!("{body}\n"),
            send_body: true,
        }
    }

    /// The bytes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            self.content_type,
            self.body.len()
        );
        for header in &self.headers {
            head.push_str(header);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        if self.send_body {
            bytes.extend_from_slice(self.body.as_bytes());
        }
        bytes
    }
}

/// The answer to one request `head` (request line and headers, as read).
pub fn answer(head: &[u8], metrics: &Metrics) -> Answer {
    let Ok(head) = std::str::from_utf8(head) else {
        return Answer::plain("400 Bad Request", "the request is not UTF-8");
    };
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Answer::plain("400 Bad Request", "not an HTTP request line");
    };
    if !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return Answer::plain("400 Bad Request", "not an HTTP/1.x request line");
    }
    let path = target.split(['?', '#']).next().unwrap_or_default();
    if path != "/metrics" {
        return Answer::plain("404 Not Found", "not found: metrics are at /metrics");
    }
    let send_body = match method {
        "GET" => true,
        "HEAD" => false,
        _ => {
            let mut answer = Answer::plain("405 Method Not Allowed", "use GET");
            answer.headers.push("Allow: GET, HEAD");
            return answer;
        }
    };
    let accept = lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("accept")
            .then(|| value.trim())
    });
    let format = Format::from_accept(accept);
    match metrics.render(format) {
        Ok(body) => Answer {
            status: "200 OK",
            content_type: format.content_type(),
            headers: Vec::new(),
            body,
            send_body,
        },
        Err(_) => Answer::plain(
            "500 Internal Server Error",
            "the metrics could not be encoded",
        ),
    }
}

/// Binds `addr` (HOST:PORT, as normalised by `home::config::metrics_address`).
pub async fn bind(addr: &str) -> Result<TcpListener, ScrapeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ScrapeError::Bind {
            addr: addr.to_string(),
            source,
        })
}

/// Serves `metrics` on `listener` until the task is aborted.
pub fn spawn(listener: TcpListener, metrics: Arc<Metrics>) -> tokio::task::JoinHandle<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: wait a little instead of spinning.
                    tracing::warn!("metrics listener: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                if let Err(e) = serve_one(stream, &metrics).await {
                    tracing::debug!(%peer, "metrics request: {e}");
                }
                drop(slot);
            });
        }
    })
}

/// Reads one request head and writes its answer.
async fn serve_one(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(Some(head))) => head,
        Ok(Ok(None)) => {
            let answer = Answer::plain("431 Request Header Fields Too Large", "request too large");
            return write(&mut stream, &answer).await;
        }
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no request within the read timeout",
            ))
        }
    };
    let answer = answer(&head, metrics);
    write(&mut stream, &answer).await
}

async fn write(stream: &mut TcpStream, answer: &Answer) -> std::io::Result<()> {
    let bytes = answer.to_bytes();
    match tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await
    {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the answer was not taken within the write timeout",
        )),
    }
}

/// The request head (up to the blank line), `None` if it is longer than [`MAX_REQUEST`].
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = find_blank_line(&head) {
            head.truncate(end);
            return Ok(Some(head));
        }
        if head.len() >= MAX_REQUEST {
            return Ok(None);
        }
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            // The client closed early: answer what came (an HTTP/1.0 client may not send
            // the blank line before half-closing, and a bad request gets a 400 anyway).
            return Ok(Some(head));
        }
        head.extend_from_slice(&chunk[..read]);
    }
}

fn find_blank_line(bytes: &[u8]) -> Option<usize> {
    bytes.windows(4).position(|w| w == b"\r\n\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::appliance::metrics::{Live, Readings};

    struct Nothing;

    impl Live for Nothing {
        fn read(&self) -> Readings {
            Readings::default()
        }
    }

    fn metrics() -> Metrics {
        let metrics = Metrics::new();
        metrics.read_live(Arc::new(Nothing));
        metrics
    }

    #[test]
    fn get_metrics_in_the_format_asked_for() {
        let m = metrics();
        let ok = answer(b"GET /metrics HTTP/1.1\r\nHost: x\r\n", &m);
        assert_eq!(ok.status, "200 OK");
        assert_eq!(ok.content_type, "text/plain; version=0.0.4; charset=utf-8");
        assert!(ok.body.contains("zester_sessions 0"), "{}", ok.body);
        let open = answer(
            b"GET /metrics?x=1 HTTP/1.0\r\naccept: application/openmetrics-text;version=1.0.0\r\n",
            &m,
        );
        assert_eq!(open.status, "200 OK");
        assert!(open
            .content_type
            .starts_with("application/openmetrics-text"));
        assert!(open.body.ends_with("# EOF\n"));
        let head = answer(b"HEAD /metrics HTTP/1.1\r\n", &m);
        let bytes = String::from_utf8(head.to_bytes()).unwrap();
        assert!(bytes.contains(&format!("Content-Length: {}", head.body.len())));
        assert!(bytes.ends_with("\r\n\r\n"), "no body for HEAD");
    }

    #[test]
    fn other_paths_methods_and_garbage_are_refused() {
        let m = metrics();
        let status = |request: &[u8]| answer(request, &m).status;
        assert_eq!(status(b"GET / HTTP/1.1\r\n"), "404 Not Found");
        assert_eq!(status(b"GET /metrics/x HTTP/1.1\r\n"), "404 Not Found");
        assert_eq!(
            status(b"POST /metrics HTTP/1.1\r\n"),
            "405 Method Not Allowed"
        );
        assert!(answer(b"DELETE /metrics HTTP/1.1\r\n", &m)
            .headers
            .contains(&"Allow: GET, HEAD"));
        assert_eq!(status(b"GET /metrics\r\n"), "400 Bad Request");
        assert_eq!(status(b"GET /metrics SPDY/3\r\n"), "400 Bad Request");
        assert_eq!(status(b"\xff\xfe"), "400 Bad Request");
        assert_eq!(status(b""), "400 Bad Request");
    }

    #[tokio::test]
    async fn serves_over_tcp_and_bounds_the_request() {
        let listener = bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = spawn(listener, Arc::new(metrics()));
        let exchange = |request: Vec<u8>| async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(&request).await.unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).await.unwrap();
            response
        };
        let ok = exchange(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()).await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("zester_keys"), "{ok}");
        // Exactly the limit and no blank line: all of it is read (unread bytes would make
        // the close a reset), and it is too much.
        let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        huge.resize(MAX_REQUEST, b'a');
        let refused = exchange(huge).await;
        assert!(refused.starts_with("HTTP/1.1 431 "), "{refused}");
        task.abort();
    }
}
