//! `[jetstream]` in `zester.toml` reaches nats-server: an appliance started with small limits
//! is asked, through its own monitoring port (`/varz`), what JetStream was given, so the test
//! checks what the broker really runs with rather than the text zester rendered.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::appliance;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_runs_with_the_configured_jetstream_limits() {
    let t = appliance::start("[jetstream]\nmax_memory = \"64MiB\"\nmax_file = \"1GiB\"\n").await;
    let monitor = t
        .appliance
        .runtime()
        .monitor_url
        .clone()
        .expect("the appliance serves monitoring");
    let varz = tokio::task::spawn_blocking(move || http_get_json(&monitor, "/varz"))
        .await
        .expect("varz request");
    let config = &varz["jetstream"]["config"];
    assert_eq!(config["max_memory"], 64 * 1024 * 1024, "{varz}");
    assert_eq!(config["max_storage"], 1024 * 1024 * 1024, "{varz}");
    t.stop().await;
}

/// GET `path` from `base` (`http://HOST:PORT`) over plain HTTP/1.0 and parse the JSON body.
fn http_get_json(base: &str, path: &str) -> Value {
    let addr = base.strip_prefix("http://").expect("an http:// URL");
    let mut stream = TcpStream::connect(addr).expect("connect to the monitoring port");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("an HTTP response with a body");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{path} is not JSON ({e}): {body}"))
}
