//! Smoke test for the shared nats-server helper: a server started by `tests/common` accepts an
//! async-nats client, which publishes a request and receives the reply.
//!
//! The replier speaks the raw NATS protocol over a std `TcpStream`: async-nats subscriptions
//! are read through `futures::Stream`, which this crate does not depend on, and a raw peer also
//! shows that the message really crossed the server rather than staying inside one client.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::Duration;

use common::NatsServer;

const SUBJECT: &str = "zester.smoke";
const TIMEOUT: Duration = Duration::from_secs(10);

/// Subscribes to `SUBJECT` on `port`, signals `ready` once the server has the subscription,
/// answers one request with `reply_prefix` + payload, and returns the payload it received.
fn raw_echo_once(port: u16, reply_prefix: &str, ready: mpsc::Sender<()>) -> Vec<u8> {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("raw connect");
    stream.set_read_timeout(Some(TIMEOUT)).expect("set timeout");
    let mut writer = stream.try_clone().expect("clone stream");
    let mut reader = BufReader::new(stream);
    let mut line = String::new();

    reader.read_line(&mut line).expect("read INFO");
    assert!(line.starts_with("INFO "), "expected INFO, got {line:?}");
    // PING after SUB: the PONG proves the server has processed the subscription.
    write!(
        writer,
        "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB {SUBJECT} 1\r\nPING\r\n"
    )
    .expect("send CONNECT/SUB");
    let mut ready = Some(ready);
    loop {
        line.clear();
        reader.read_line(&mut line).expect("read from server");
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["PONG"] => {
                if let Some(ready) = ready.take() {
                    ready.send(()).expect("test still waiting");
                }
            }
            ["PING"] => writer.write_all(b"PONG\r\n").expect("send PONG"),
            ["MSG", subject, _sid, reply, len] => {
                assert_eq!(*subject, SUBJECT);
                let len: usize = len.parse().expect("MSG length");
                let mut payload = vec![0; len + 2];
                reader.read_exact(&mut payload).expect("read payload");
                payload.truncate(len);
                let mut answer = reply_prefix.as_bytes().to_vec();
                answer.extend_from_slice(&payload);
                write!(writer, "PUB {reply} {}\r\n", answer.len()).expect("send PUB");
                writer.write_all(&answer).expect("send reply payload");
                writer.write_all(b"\r\n").expect("send CRLF");
                writer.flush().expect("flush");
                return payload;
            }
            other => panic!("unexpected from server: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_nats_client_publishes_and_receives_through_the_server() {
    let server = NatsServer::start("");
    assert!(server.url().ends_with(&format!(":{}", server.port())));

    let (ready_tx, ready_rx) = mpsc::channel();
    let port = server.port();
    let replier = std::thread::spawn(move || raw_echo_once(port, "echo: ", ready_tx));
    tokio::task::spawn_blocking(move || ready_rx.recv_timeout(TIMEOUT))
        .await
        .expect("join")
        .expect("raw subscriber ready");

    let client = async_nats::connect(server.url())
        .await
        .expect("async-nats connects");
    let reply = tokio::time::timeout(TIMEOUT, client.request(SUBJECT, "hello".into()))
        .await
        .expect("reply within timeout")
        .expect("request succeeds");

    assert_eq!(&reply.payload[..], b"echo: hello");
    assert_eq!(replier.join().expect("replier thread"), b"hello");
    assert!(
        server.log().contains("Server is ready"),
        "log:\n{}",
        server.log()
    );
}

#[cfg(target_os = "linux")]
#[test]
fn dropping_the_server_stops_it() {
    let server = NatsServer::start("");
    let proc_dir = std::path::PathBuf::from(format!("/proc/{}", server.pid()));
    assert!(proc_dir.exists(), "server process not visible in /proc");
    drop(server);
    // Drop reaps the child, so its /proc entry must be gone (not merely a zombie).
    assert!(!proc_dir.exists(), "server process still exists after drop");
}

#[test]
fn bad_config_fails_with_the_server_log() {
    let result = std::panic::catch_unwind(|| NatsServer::start("this is { not valid"));
    let message = match result {
        Ok(_) => panic!("a broken config must not start"),
        Err(panic) => panic.downcast_ref::<String>().cloned().unwrap_or_default(),
    };
    assert!(message.contains("exited during startup"), "{message}");
    assert!(message.contains("Parse error"), "{message}");
}
