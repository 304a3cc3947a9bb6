//! `[jetstream]` in `zester.toml` reaches nats-server: an appliance started with small limits
//! is asked, through its own monitoring port (`/varz`), what JetStream was given, so the test
//! checks what the broker really runs with rather than the text zester rendered.

mod common;

use common::appliance;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_runs_with_the_configured_jetstream_limits() {
    let t = appliance::start("[jetstream]\nmax_memory = \"64MiB\"\nmax_file = \"1GiB\"\n").await;
    let monitor = t
        .appliance
        .runtime()
        .monitor_url
        .clone()
        .expect("the appliance serves monitoring");
    let varz = tokio::task::spawn_blocking(move || common::http_get_json(&monitor, "/varz"))
        .await
        .expect("varz request");
    let config = &varz["jetstream"]["config"];
    assert_eq!(config["max_memory"], 64 * 1024 * 1024, "{varz}");
    assert_eq!(config["max_storage"], 1024 * 1024 * 1024, "{varz}");
    t.stop().await;
}
