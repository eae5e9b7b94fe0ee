//! What the PostgreSQL store does when the database misbehaves: a statement that runs out of
//! time, a connection the server ends, connections that died while idle in the pool, and the
//! event-log appender across all of them. Against the throwaway cluster on loopback.

use crate::tests::{draft, rt};
use crate::{EventLog, PgOptions, PgStore, Store, StoreError, Table};
use std::time::Duration;

/// A plain connection of the test's own, beside the store's pool.
async fn side_connection(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

/// Waits (bounded) until one of the store's connections waits on a lock.
async fn store_waits_on_a_lock(side: &impl tokio_postgres::GenericClient) {
    for _ in 0..400 {
        let n: i64 = side
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'portcullis'
                 AND datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if n > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the store's statement never waited on the lock");
}

/// Ends every connection of the store (as a database restart or an administrator would).
async fn terminate_store_connections(side: &impl tokio_postgres::GenericClient) -> i64 {
    side.query_one(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE application_name = 'portcullis' AND datname = current_database()",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// A statement that runs into `statement_timeout` (here: waiting on a row another session
/// holds) is "unavailable, retry", not a backend failure (which clients see as `INTERNAL`).
#[test]
fn a_statement_timeout_is_unavailable() {
    let url = portcullis_testdb::cluster().fresh_database();
    rt().block_on(async {
        let mut options = PgOptions::new(&url);
        options.statement_timeout = Duration::from_millis(300);
        let store = PgStore::connect(&options).await.unwrap();
        store.put(Table::Users, b"u", b"v1".to_vec()).await.unwrap();
        let mut side = side_connection(&url).await;
        let tx = side.transaction().await.unwrap();
        tx.execute("SELECT 1 FROM users WHERE key = 'u' FOR UPDATE", &[])
            .await
            .unwrap();
        let err = store
            .put(Table::Users, b"u", b"v2".to_vec())
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        tx.rollback().await.unwrap();
        store.put(Table::Users, b"u", b"v3".to_vec()).await.unwrap();
        assert_eq!(
            store.get(Table::Users, b"u").await.unwrap(),
            Some(b"v3".to_vec())
        );
    });
}

/// The server ends the store's connections while a statement is in flight (what a database
/// shutting down or crashing does): that statement fails "unavailable"; the pool replaces the
/// dead connections and the next statement succeeds.
#[test]
fn a_connection_the_server_ends_is_unavailable_then_replaced() {
    let url = portcullis_testdb::cluster().fresh_database();
    rt().block_on(async {
        let store = std::sync::Arc::new(PgStore::connect(&PgOptions::new(&url)).await.unwrap());
        store.put(Table::Users, b"u", b"v1".to_vec()).await.unwrap();
        let mut side = side_connection(&url).await;
        let tx = side.transaction().await.unwrap();
        tx.execute("SELECT 1 FROM users WHERE key = 'u' FOR UPDATE", &[])
            .await
            .unwrap();
        let blocked = {
            let store = std::sync::Arc::clone(&store);
            tokio::spawn(async move { store.put(Table::Users, b"u", b"v2".to_vec()).await })
        };
        store_waits_on_a_lock(&tx).await;
        assert!(terminate_store_connections(&tx).await >= 1);
        let err = blocked.await.unwrap().unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        tx.rollback().await.unwrap();
        store.put(Table::Users, b"u", b"v3".to_vec()).await.unwrap();
        assert_eq!(
            store.get(Table::Users, b"u").await.unwrap(),
            Some(b"v3".to_vec())
        );
    });
}

/// Connections that died while idle in the pool (the database restarted during a quiet
/// moment) are not handed to the next command: it gets a working connection. The runtime has
/// one thread and is blocked while the connections are ended, so the pool cannot have noticed
/// by itself that they closed.
#[test]
fn connections_that_died_idle_are_not_handed_out() {
    let url = portcullis_testdb::cluster().fresh_database();
    let cluster = portcullis_testdb::cluster();
    let db = url.rsplit('/').next().unwrap().to_owned();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let store = PgStore::connect(&PgOptions::new(&url)).await.unwrap();
            store.put(Table::Users, b"u", b"v1".to_vec()).await.unwrap();
            // Idle for a while, then every connection ends, with this thread blocked.
            std::thread::sleep(super::IDLE_CHECK + Duration::from_millis(200));
            let ended = cluster.psql(
                &db,
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                 WHERE application_name = 'portcullis' AND datname = current_database()",
            );
            assert_ne!(ended, "0");
            std::thread::sleep(Duration::from_millis(200));
            assert_eq!(
                store.get(Table::Users, b"u").await.unwrap(),
                Some(b"v1".to_vec())
            );
            // The event-log appender's connection comes from the same pool.
            let e = store.append(draft("AFTER")).await.unwrap();
            assert_eq!(e.seq, 1);
        });
}

/// The appender survives failed appends: while `log_head` is held elsewhere and its
/// connection is ended, the waiting append fails "unavailable"; the next append succeeds and
/// continues the chain with no gap.
#[test]
fn the_appender_survives_a_failed_append() {
    let url = portcullis_testdb::cluster().fresh_database();
    rt().block_on(async {
        let store = std::sync::Arc::new(PgStore::connect(&PgOptions::new(&url)).await.unwrap());
        assert_eq!(store.append(draft("FIRST")).await.unwrap().seq, 1);
        let mut side = side_connection(&url).await;
        let tx = side.transaction().await.unwrap();
        tx.execute("SELECT 1 FROM log_head WHERE id = 1 FOR UPDATE", &[])
            .await
            .unwrap();
        let blocked = {
            let store = std::sync::Arc::clone(&store);
            tokio::spawn(async move { store.append(draft("LOST")).await })
        };
        store_waits_on_a_lock(&tx).await;
        assert!(terminate_store_connections(&tx).await >= 1);
        let err = blocked.await.unwrap().unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        tx.rollback().await.unwrap();
        let e = store.append(draft("SECOND")).await.unwrap();
        assert_eq!(e.seq, 2);
        let report = crate::log::verify_events(store.as_ref(), 1, None)
            .await
            .unwrap();
        assert!(report.valid, "{report:?}");
        assert_eq!(report.checked, 2);
    });
}

/// A TCP proxy on loopback in front of the cluster that can stop passing bytes on — a hung
/// server, or a network path that silently drops everything — and pass them on again.
struct Proxy {
    port: u16,
    frozen: tokio::sync::watch::Sender<bool>,
}

impl Proxy {
    async fn start(upstream: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = tokio::sync::watch::Sender::new(false);
        let watch = frozen.subscribe();
        tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let Ok(up) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                let (down_r, down_w) = down.into_split();
                let (up_r, up_w) = up.into_split();
                tokio::spawn(pipe(down_r, up_w, watch.clone()));
                tokio::spawn(pipe(up_r, down_w, watch.clone()));
            }
        });
        Proxy { port, frozen }
    }

    fn freeze(&self, frozen: bool) {
        self.frozen.send_replace(frozen);
    }
}

/// Copies `from` to `to`, holding the bytes while frozen.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// The database stops answering altogether (no error, no closed socket: `statement_timeout`
/// cannot fire): reads, writes and appends fail "unavailable" once the store's deadline
/// passes, instead of hanging; when it answers again, the same store serves again by itself
/// and the chain goes on unbroken.
#[test]
fn a_database_that_stops_answering_fails_operations_instead_of_hanging() {
    let cluster = portcullis_testdb::cluster();
    let url = cluster.fresh_database();
    let db = url.rsplit('/').next().unwrap().to_owned();
    rt().block_on(async {
        let proxy = Proxy::start(cluster.port()).await;
        let mut options =
            PgOptions::new(format!("postgres://postgres@127.0.0.1:{}/{db}", proxy.port));
        options.statement_timeout = Duration::from_millis(200);
        options.connect_timeout = Duration::from_millis(200);
        let store = PgStore::connect(&options).await.unwrap();
        store.put(Table::Users, b"u", b"v1".to_vec()).await.unwrap();
        store.append(draft("BEFORE")).await.unwrap();
        proxy.freeze(true);
        // Far beyond the store's deadline: reaching it means a hang.
        let hang = Duration::from_secs(20);
        let got = tokio::time::timeout(hang, store.get(Table::Users, b"u"))
            .await
            .expect("a read hung");
        assert!(matches!(got, Err(StoreError::Unavailable(_))), "{got:?}");
        let put = tokio::time::timeout(hang, store.put(Table::Users, b"u", b"v2".to_vec()))
            .await
            .expect("a write hung");
        assert!(matches!(put, Err(StoreError::Unavailable(_))), "{put:?}");
        let appended = tokio::time::timeout(hang, store.append(draft("FROZEN")))
            .await
            .expect("an append hung");
        assert!(
            matches!(appended, Err(StoreError::Unavailable(_))),
            "{appended:?}"
        );
        proxy.freeze(false);
        store.put(Table::Users, b"u", b"v3".to_vec()).await.unwrap();
        assert_eq!(
            store.get(Table::Users, b"u").await.unwrap(),
            Some(b"v3".to_vec())
        );
        let after = store.append(draft("AFTER")).await.unwrap();
        let report = crate::log::verify_events(&store, 1, None).await.unwrap();
        assert!(report.valid, "{report:?}");
        assert_eq!(report.checked, after.seq);
    });
}
