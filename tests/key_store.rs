//! The key store against a real nats-server with JetStream: records reach the cache through the
//! watch, compare-and-set lets exactly one of two racing writers win, records survive a server
//! restart, the watch follows a restarted server, the offline journal imports, and damaged
//! values are skipped instead of crashing anyone.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use common::NatsServer;
use futures_util::TryStreamExt;
use nkeys::KeyPair;
use tokio::net::{TcpListener, TcpStream};
use zester::appliance::keys::{
    journal, CreateOutcome, KeyError, KeyRecord, KeyState, KeyStore, KeyStoreError, BUCKET,
};
use zester::home::Home;
use zester::identity::peel_id::PeelId;

/// Generous: the machine running the tests may be slow and busy.
const WAIT: Duration = Duration::from_secs(20);
const NOW: i64 = 1_800_000_000;

fn log_to_test_output() {
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_test_writer()
        .try_init();
}

/// A server with JetStream whose store lives in `store_dir` (outside the server's own temp dir,
/// so a second server can reopen it).
fn jetstream_server(store_dir: &Path) -> NatsServer {
    NatsServer::start(&format!(
        "jetstream {{ store_dir: {} }}\n",
        common::quote(store_dir)
    ))
}

async fn connect(url: &str) -> async_nats::Client {
    async_nats::connect(url)
        .await
        .expect("connect to nats-server")
}

async fn open(url: &str) -> KeyStore {
    KeyStore::open(connect(url).await)
        .await
        .expect("open the key store")
}

fn id(text: &str) -> PeelId {
    PeelId::parse(text).unwrap()
}

fn accepted(name: &str) -> KeyRecord {
    KeyRecord::new_accepted(
        id(name),
        &KeyPair::new_user().public_key(),
        "test",
        "issued",
        NOW,
    )
    .unwrap()
}

#[tokio::test]
async fn created_records_reach_the_cache_and_ids_are_not_taken_over() {
    log_to_test_output();
    let store_dir = tempfile::tempdir().unwrap();
    let server = jetstream_server(store_dir.path());
    let store = open(&server.url()).await;
    let cache = store.cache();
    assert_eq!(cache.counts().total(), 0);

    let record = accepted("web-01");
    let revision = store.create(&record).await.unwrap();
    store.wait_for_revision(revision, WAIT).await.unwrap();
    let seen = cache.lookup_nkey(&record.nkey).expect("visible by nkey");
    assert_eq!(*seen, record);
    assert_eq!(*cache.lookup_id(&record.id).unwrap(), record);
    assert_eq!(
        cache.lookup_id_with_revision(&record.id).unwrap().1,
        revision
    );
    assert_eq!(cache.counts().accepted, 1);
    assert_eq!(
        store.get(&record.id).await.unwrap(),
        Some((record.clone(), revision))
    );
    assert_eq!(store.get(&id("nobody")).await.unwrap(), None);

    // Registering the same accepted key again is a no-op that reports the existing revision.
    assert_eq!(
        store.create_or_same(&record).await.unwrap(),
        CreateOutcome::AlreadyPresent(revision)
    );
    // Another key for the same id is refused, naming the key already there.
    let squatter = accepted("web-01");
    let err = store.create(&squatter).await.unwrap_err();
    match &err {
        KeyStoreError::AlreadyExists {
            state, same_key, ..
        } => {
            assert_eq!(*state, KeyState::Accepted);
            assert!(!same_key);
        }
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert!(err.to_string().contains(&record.fingerprint()), "{err}");
    assert_eq!(
        cache.lookup_id(&record.id).unwrap().nkey,
        record.nkey,
        "the cache still binds the id to the first key"
    );
    assert!(cache.lookup_nkey(&squatter.nkey).is_none());
    store.close().await;
}

#[tokio::test]
async fn of_two_updates_from_the_same_revision_exactly_one_wins() {
    log_to_test_output();
    let store_dir = tempfile::tempdir().unwrap();
    let server = jetstream_server(store_dir.path());
    let first = open(&server.url()).await;
    let second = open(&server.url()).await;

    let pending = KeyRecord::new_pending(
        id("db"),
        &KeyPair::new_user().public_key(),
        Some(&nkeys::XKey::new().public_key()),
        "enrol",
        "hello",
        NOW,
    )
    .unwrap();
    let created = first.create(&pending).await.unwrap();
    let accept = pending
        .transition(KeyState::Accepted, "alice", "known host", NOW + 1)
        .unwrap();
    let reject = pending
        .transition(KeyState::Rejected, "bob", "unknown host", NOW + 1)
        .unwrap();

    let (a, b) = tokio::join!(
        first.update(&pending.id, created, &accept),
        second.update(&pending.id, created, &reject)
    );
    let (winner, winning_revision, loser_error) = match (a, b) {
        (Ok(revision), Err(error)) => (accept, revision, error),
        (Err(error), Ok(revision)) => (reject, revision, error),
        (a, b) => panic!("exactly one update must win, got {a:?} and {b:?}"),
    };
    match &loser_error {
        KeyStoreError::Conflict {
            expected, found, ..
        } => {
            assert_eq!(*expected, created);
            assert_eq!(*found, Some(winning_revision));
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    let message = loser_error.to_string();
    assert!(message.contains("someone else changed"), "{message}");
    assert!(message.contains("read it again"), "{message}");

    for store in [&first, &second] {
        store
            .wait_for_revision(winning_revision, WAIT)
            .await
            .unwrap();
        assert_eq!(*store.cache().lookup_id(&pending.id).unwrap(), winner);
    }
    assert_eq!(
        first.get(&pending.id).await.unwrap(),
        Some((winner, winning_revision))
    );

    // A stale revision is refused even without a race, and so is another peel's record.
    let err = first
        .update(&pending.id, created, &pending)
        .await
        .unwrap_err();
    assert!(matches!(err, KeyStoreError::Conflict { .. }), "{err}");
    let err = first
        .update(&id("other"), winning_revision, &pending)
        .await
        .unwrap_err();
    assert!(matches!(err, KeyStoreError::IdMismatch { .. }), "{err}");
}

#[tokio::test]
async fn records_survive_a_server_restart_on_the_same_store() {
    log_to_test_output();
    let store_dir = tempfile::tempdir().unwrap();
    let records = [accepted("a"), accepted("b")];
    let revoked_revision;
    {
        let server = jetstream_server(store_dir.path());
        let store = open(&server.url()).await;
        for record in &records {
            store.create(record).await.unwrap();
        }
        let (current, revision) = store.get(&records[1].id).await.unwrap().unwrap();
        let revoked = current
            .transition(KeyState::Revoked, "admin", "lost", NOW + 5)
            .unwrap();
        revoked_revision = store
            .update(&records[1].id, revision, &revoked)
            .await
            .unwrap();
        store.close().await;
    }
    let server = jetstream_server(store_dir.path());
    let store = open(&server.url()).await;
    let cache = store.cache();
    assert_eq!(
        cache.revision(),
        revoked_revision,
        "loaded up to the last write"
    );
    assert_eq!(*cache.lookup_nkey(&records[0].nkey).unwrap(), records[0]);
    let revoked = cache.lookup_nkey(&records[1].nkey).unwrap();
    assert_eq!(revoked.state, KeyState::Revoked);
    assert_eq!(revoked.history.len(), 2);
    let counts = cache.counts();
    assert_eq!((counts.accepted, counts.revoked), (1, 1));
}

#[tokio::test]
async fn a_second_store_follows_the_writes_of_the_first() {
    log_to_test_output();
    let store_dir = tempfile::tempdir().unwrap();
    let server = jetstream_server(store_dir.path());
    let writer = open(&server.url()).await;
    let reader = open(&server.url()).await;
    let cache = reader.cache();

    let record = accepted("follow-me");
    let created = writer.create(&record).await.unwrap();
    reader.wait_for_revision(created, WAIT).await.unwrap();
    assert_eq!(*cache.lookup_nkey(&record.nkey).unwrap(), record);

    let revoked = record
        .transition(KeyState::Revoked, "admin", "compromised", NOW + 1)
        .unwrap();
    let revision = writer.update(&record.id, created, &revoked).await.unwrap();
    reader.wait_for_revision(revision, WAIT).await.unwrap();
    assert_eq!(
        cache.lookup_nkey(&record.nkey).unwrap().state,
        KeyState::Revoked
    );

    // A burst of writes all arrives.
    let mut last = 0;
    for n in 0..20 {
        last = writer
            .create(&accepted(&format!("burst-{n}")))
            .await
            .unwrap();
    }
    reader.wait_for_revision(last, WAIT).await.unwrap();
    assert_eq!(cache.counts().accepted, 20);

    // Deleting a key (by hand, with the KV API) removes it from the cache.
    let kv = jetstream::new(connect(&server.url()).await)
        .get_key_value(BUCKET)
        .await
        .unwrap();
    kv.delete("burst-0").await.unwrap();
    let marker = writer.create(&accepted("after-delete")).await.unwrap();
    reader.wait_for_revision(marker, WAIT).await.unwrap();
    assert!(cache.lookup_id(&id("burst-0")).is_none());
    assert!(cache.lookup_id(&id("after-delete")).is_some());
    // A deleted id can be registered again.
    writer.create(&accepted("burst-0")).await.unwrap();
}

/// A TCP proxy on a fixed local port whose backend can be switched, so a client keeps one
/// address while the nats-server behind it is replaced (as the supervisor's restart does).
struct Proxy {
    port: u16,
    backend: Arc<AtomicU16>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(backend: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let backend = Arc::new(AtomicU16::new(backend));
        let target = backend.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let port = target.load(Ordering::SeqCst);
                tokio::spawn(async move {
                    // No backend (server down): dropping the connection makes the client retry.
                    if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", port)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Proxy {
            port,
            backend,
            task,
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn switch_to(&self, backend: u16) {
        self.backend.store(backend, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn the_watch_keeps_the_cache_current_across_a_server_restart() {
    log_to_test_output();
    let store_dir = tempfile::tempdir().unwrap();
    let first_server = jetstream_server(store_dir.path());
    let proxy = Proxy::start(first_server.port()).await;
    let store = open(&proxy.url()).await;
    let cache = store.cache();
    let before = accepted("before");
    let revision = store.create(&before).await.unwrap();
    store.wait_for_revision(revision, WAIT).await.unwrap();

    // The supervisor's restart: the server goes away for a moment and comes back on the same
    // store.
    drop(first_server);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second_server = jetstream_server(store_dir.path());
    proxy.switch_to(second_server.port());

    // Written by someone else on the restarted server: only the watch can bring it here.
    let other = open(&second_server.url()).await;
    let after = accepted("after");
    let revision = other.create(&after).await.unwrap();
    store.wait_for_revision(revision, WAIT).await.unwrap();
    assert_eq!(*cache.lookup_nkey(&after.nkey).unwrap(), after);
    assert_eq!(*cache.lookup_nkey(&before.nkey).unwrap(), before);

    // And the store's own writes work again, and come back through its watch.
    let (current, current_revision) = store.get(&before.id).await.unwrap().unwrap();
    let revoked = current
        .transition(KeyState::Revoked, "admin", "after restart", NOW + 1)
        .unwrap();
    let revision = store
        .update(&before.id, current_revision, &revoked)
        .await
        .unwrap();
    store.wait_for_revision(revision, WAIT).await.unwrap();
    assert_eq!(
        cache.lookup_nkey(&before.nkey).unwrap().state,
        KeyState::Revoked
    );
}

#[tokio::test]
async fn the_watch_recovers_when_its_consumer_is_deleted() {
    log_to_test_output();
    let store_dir = tempfile::tempdir().unwrap();
    let server = jetstream_server(store_dir.path());
    let store = open(&server.url()).await;
    let js = jetstream::new(connect(&server.url()).await);
    let stream = js.get_stream(format!("KV_{BUCKET}")).await.unwrap();
    let names: Vec<String> = stream.consumer_names().try_collect().await.unwrap();
    assert!(!names.is_empty(), "the watch has a consumer");
    for name in &names {
        stream.delete_consumer(name).await.unwrap();
    }
    // Written while nothing delivers to the watch; it must notice and catch up.
    let other = open(&server.url()).await;
    let record = accepted("late");
    let revision = other.create(&record).await.unwrap();
    store
        .wait_for_revision(revision, Duration::from_secs(40))
        .await
        .unwrap();
    assert_eq!(*store.cache().lookup_nkey(&record.nkey).unwrap(), record);
}

#[tokio::test]
async fn the_journal_imports_in_order_and_sets_bad_entries_aside() {
    log_to_test_output();
    let store_dir = tempfile::tempdir().unwrap();
    let server = jetstream_server(store_dir.path());
    let store = open(&server.url()).await;
    let home_dir = tempfile::tempdir().unwrap();
    let home = Home::at(home_dir.path());

    // Already in the store: one with the same key (done), one with another key (conflict).
    let present = accepted("present");
    store.create(&present).await.unwrap();
    let taken = accepted("taken");
    store.create(&taken).await.unwrap();

    let fresh = [accepted("one"), accepted("two"), accepted("three")];
    for record in &fresh {
        journal::record(&home, record).unwrap();
    }
    journal::record(&home, &present).unwrap();
    journal::record(&home, &accepted("taken")).unwrap();
    let corrupt = home
        .keys_journal_dir()
        .join("00000000000000000001-broken.json");
    std::fs::write(&corrupt, b"{\"id\": \"broken\", \"nkey\": ").unwrap();
    assert_eq!(journal::pending_entries(&home).unwrap().len(), 6);

    let report = journal::import(&home, &store).await.unwrap();
    let ids = |list: &[PeelId]| list.iter().map(|i| i.to_string()).collect::<Vec<_>>();
    assert_eq!(
        ids(&report.imported),
        ["one", "two", "three"],
        "journal order"
    );
    assert_eq!(ids(&report.already_present), ["present"]);
    assert_eq!(report.rejected.len(), 2, "{:?}", report.rejected);
    // The corrupt entry sorts first.
    assert!(report.rejected[0]
        .file
        .ends_with("rejected/00000000000000000001-broken.json"));
    assert!(
        report.rejected[0].reason.contains("broken.json"),
        "{:?}",
        report.rejected[0]
    );
    assert!(
        report.rejected[1].reason.contains("already registered"),
        "{:?}",
        report.rejected[1]
    );
    for entry in &report.rejected {
        assert!(entry.file.exists());
    }
    assert!(
        journal::pending_entries(&home).unwrap().is_empty(),
        "imported entries are gone"
    );
    assert!(!corrupt.exists());

    let cache = store.cache();
    let last = store.get(&id("three")).await.unwrap().unwrap().1;
    store.wait_for_revision(last, WAIT).await.unwrap();
    for record in &fresh {
        assert_eq!(*cache.lookup_nkey(&record.nkey).unwrap(), *record);
    }
    assert_eq!(cache.lookup_id(&taken.id).unwrap().nkey, taken.nkey);

    // Nothing left: a second import does nothing.
    assert_eq!(
        journal::import(&home, &store).await.unwrap(),
        journal::ImportReport::default()
    );
}

#[tokio::test]
async fn corrupted_values_in_the_bucket_are_skipped_not_fatal() {
    log_to_test_output();
    let store_dir = tempfile::tempdir().unwrap();
    let server = jetstream_server(store_dir.path());
    let store = open(&server.url()).await;
    let cache = store.cache();
    let kv = jetstream::new(connect(&server.url()).await)
        .get_key_value(BUCKET)
        .await
        .unwrap();

    let record = accepted("web");
    store.create(&record).await.unwrap();
    // Garbage on top of a good record, garbage under a new id, and a record under a key that
    // is not its id.
    kv.put("web", "\u{0}not json".into()).await.unwrap();
    kv.put("junk", "[1, 2".into()).await.unwrap();
    kv.put("misfiled", accepted("elsewhere").to_json().into())
        .await
        .unwrap();
    let marker = store.create(&accepted("marker")).await.unwrap();
    store.wait_for_revision(marker, WAIT).await.unwrap();

    assert_eq!(
        *cache.lookup_id(&record.id).unwrap(),
        record,
        "the last good record is kept"
    );
    assert!(cache.lookup_id(&id("junk")).is_none());
    assert!(cache.lookup_id(&id("misfiled")).is_none());
    assert!(cache.lookup_id(&id("elsewhere")).is_none());
    assert!(cache.lookup_id(&id("marker")).is_some());

    // Reading the damaged entry directly is an error that names it.
    let err = store.get(&id("web")).await.unwrap_err();
    assert!(
        matches!(err, KeyStoreError::Record(KeyError::Corrupt { .. })),
        "{err:?}"
    );
    assert!(err.to_string().contains("\"web\""), "{err}");

    // A fresh store loads past the damage too.
    let again = open(&server.url()).await;
    let counts = again.cache().counts();
    assert_eq!(counts.accepted, 1, "only the marker is readable");
    assert!(again.cache().lookup_id(&id("marker")).is_some());
}

#[tokio::test]
async fn an_existing_bucket_with_other_settings_is_used_as_it_is() {
    log_to_test_output();
    let store_dir = tempfile::tempdir().unwrap();
    let server = jetstream_server(store_dir.path());
    let js = jetstream::new(connect(&server.url()).await);
    js.create_key_value(jetstream::kv::Config {
        bucket: BUCKET.to_string(),
        history: 2,
        storage: jetstream::stream::StorageType::Memory,
        ..Default::default()
    })
    .await
    .unwrap();
    let store = open(&server.url()).await;
    let revision = store.create(&accepted("x")).await.unwrap();
    store.wait_for_revision(revision, WAIT).await.unwrap();
    // Opening twice is fine as well.
    open(&server.url()).await;
}
