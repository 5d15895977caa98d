//! Several instances on one store: one leads, the others stand by and take over. PostgreSQL
//! tests need `DATABASE_URL` (skipped without it, failing under `WECHAT_KF_CI=1`); SQLite ones
//! run everywhere.

use std::time::Duration;

use wechat_kf_service::Service;

use crate::common::*;

#[tokio::test]
async fn a_second_instance_stands_by_and_takes_over_when_the_leader_stops() {
    let Some(url) = require_env("DATABASE_URL") else {
        return;
    };
    let schema = PgSchema::create(&url).await;
    standby_takes_over(Some(&schema.url)).await;
    schema.drop().await;
}

#[tokio::test]
async fn a_second_instance_on_the_same_sqlite_file_stands_by_and_takes_over() {
    standby_takes_over(None).await;
}

/// Two instances on one store (PostgreSQL at `db`, else a SQLite file): the second stands by
/// while the first delivers, takes over when it stops, and every message arrives once.
async fn standby_takes_over(db: Option<&str>) {
    let emu = emulator().await;
    let sink = Sink::start().await;
    let kf = emu.emulator().create_account("leader");
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&emu, &dir.path().join("kf.db"), Some(&sink.url));
    if let Some(db) = db {
        config.storage.db = Some(db.to_owned());
    }
    config.storage.standby_poll = Duration::from_millis(100);
    config.wechat.accounts = vec![kf.clone().into()];

    let first = start(&emu, config.clone()).await;
    assert!(first.leader().is_some_and(|l| l.is_held()));
    let mut expected = send_texts(&emu, &kf, "wmL1", 5);
    wait_for(
        "delivered by the leader",
        Duration::from_secs(15),
        || async { sink.acked_count() >= expected.len() },
    )
    .await;

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let second = tokio::spawn(Service::start_on(config.clone(), listener));
    let http = reqwest::Client::new();
    wait_for("the standby answers", Duration::from_secs(10), || async {
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "a standby is not ready");
    assert!(ready.text().await.unwrap().contains("standby"));
    let callback = http
        .post(format!("{base}/callback"))
        .body("<xml/>")
        .send()
        .await
        .unwrap();
    if db.is_some() {
        // A PostgreSQL standby serves callbacks (their wakes go to the leader): this one is
        // not a callback at all.
        assert_eq!(callback.status(), 400);
    } else {
        assert_eq!(callback.status(), 503, "callbacks go to the leader");
    }

    // The leader keeps working; the standby touches nothing.
    expected.extend(send_texts(&emu, &kf, "wmL2", 5));
    wait_for(
        "delivered by the leader",
        Duration::from_secs(15),
        || async { sink.acked_count() >= expected.len() },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.is_finished(), "still standing by");

    first.shutdown().await;
    let second = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("the standby took over")
        .unwrap()
        .unwrap();
    assert!(second.leader().is_some_and(|l| l.is_held()));
    emu.emulator()
        .set_callback_url(Some(format!("{}/callback", second.base_url())));
    expected.extend(send_texts(&emu, &kf, "wmL1", 5));
    wait_for(
        "delivered by the new leader",
        Duration::from_secs(15),
        || async { sink.acked_count() >= expected.len() },
    )
    .await;
    assert_all_delivered_once(&second, &sink, &expected).await;
    second.shutdown().await;
    emu.shutdown().await;
}

/// A throwaway schema, an emulator, and a service config on that schema (without a webhook);
/// `None` (the test is skipped) without `DATABASE_URL`.
async fn on_postgres() -> Option<(
    PgSchema,
    wechat_kf_emulator::RunningEmulator,
    tempfile::TempDir,
    wechat_kf_service::config::Config,
)> {
    let url = require_env("DATABASE_URL")?;
    let schema = PgSchema::create(&url).await;
    let emu = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&emu, &dir.path().join("unused.db"), None);
    config.storage.db = Some(schema.url.clone());
    Some((schema, emu, dir, config))
}

#[tokio::test]
async fn a_leader_whose_lock_connection_dies_notices_and_hands_over() {
    let Some((schema, emu, _dir, mut config)) = on_postgres().await else {
        return;
    };
    config.storage.standby_poll = Duration::from_millis(100);

    let first = start(&emu, config.clone()).await;
    let pid = first.leader().unwrap().backend_pid().unwrap();
    let lost = first.leadership_lost();
    schema
        .admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(15), lost)
        .await
        .expect("the leader noticed the lost lock");
    assert!(!first.leader().unwrap().is_held());
    // PostgreSQL released the lock with the connection: another instance leads at once.
    let second = tokio::time::timeout(Duration::from_secs(10), Service::start(config))
        .await
        .expect("a new leader")
        .unwrap();
    assert!(second.leader().is_some());
    tokio::time::timeout(Duration::from_secs(5), first.abandon())
        .await
        .expect("abandoning finishes nothing, so it is quick");
    second.shutdown().await;
    emu.shutdown().await;
    schema.drop().await;
}

#[tokio::test]
async fn a_running_service_that_loses_its_lock_returns_leadership_lost() {
    let Some((schema, emu, _dir, config)) = on_postgres().await else {
        return;
    };
    let run = tokio::spawn(Service::run(config, std::future::pending()));
    // The holder of this schema's leader lock, as PostgreSQL sees it.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let holder: i32 = loop {
        let row = schema
            .admin
            .query_opt(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
                 AND classid = 7428102 AND objid = hashtext($1)::oid",
                &[&schema.name()],
            )
            .await
            .unwrap();
        if let Some(row) = row {
            break row.get(0);
        }
        assert!(std::time::Instant::now() < deadline, "no leader lock");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    schema
        .admin
        .execute("SELECT pg_terminate_backend($1)", &[&holder])
        .await
        .unwrap();
    let result = tokio::time::timeout(Duration::from_secs(15), run)
        .await
        .expect("run returned")
        .unwrap();
    assert!(
        matches!(result, Err(wechat_kf_service::Error::LeadershipLost)),
        "{result:?}"
    );
    emu.shutdown().await;
    schema.drop().await;
}

#[tokio::test]
async fn a_sqlite_leader_names_itself_in_its_lock_file_and_never_loses_the_lock() {
    let emu = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let running = start(&emu, config(&emu, &db, None)).await;
    let lock = running.leader().expect("a SQLite file is led");
    assert!(lock.is_held());
    assert_eq!(lock.backend_pid(), None);
    assert_eq!(
        wechat_kf_service::leader::lock_file_owner(db.to_str().unwrap()),
        Some(std::process::id())
    );
    // Another process (here: another open file) cannot take it while this one leads.
    assert!(
        wechat_kf_service::leader::LeaderLock::try_acquire_file(db.to_str().unwrap())
            .unwrap()
            .is_none()
    );
    let lost = running.leadership_lost();
    assert!(
        tokio::time::timeout(Duration::from_millis(100), lost)
            .await
            .is_err(),
        "never resolves"
    );
    running.shutdown().await;
    assert!(
        wechat_kf_service::leader::LeaderLock::try_acquire_file(db.to_str().unwrap())
            .unwrap()
            .is_some(),
        "released at shutdown"
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn a_search_path_naming_no_existing_schema_is_a_clear_error() {
    let Some(url) = require_env("DATABASE_URL") else {
        return;
    };
    let emu = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&emu, &dir.path().join("unused.db"), None);
    let sep = if url.contains('?') { '&' } else { '?' };
    config.storage.db = Some(format!(
        "{url}{sep}options=-c%20search_path%3Dwk_no_such_schema_{}",
        uuid::Uuid::new_v4().simple()
    ));
    let error = Service::start(config).await.unwrap_err();
    assert!(error.to_string().contains("search_path"), "{error}");
    emu.shutdown().await;
}

#[tokio::test]
async fn a_half_sent_request_to_a_standby_does_not_hold_up_its_takeover() {
    use tokio::io::AsyncWriteExt;
    let emu = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&emu, &dir.path().join("kf.db"), None);
    config.storage.standby_poll = Duration::from_millis(100);
    config.http.read_timeout = Duration::from_secs(60);
    config.http.shutdown_grace = Duration::from_millis(300);
    let first = start(&emu, config.clone()).await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let second = tokio::spawn(Service::start_on(config, listener));
    wait_for("the standby answers", Duration::from_secs(10), || async {
        reqwest::get(format!("http://{addr}/healthz"))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let mut half_sent = tokio::net::TcpStream::connect(addr).await.unwrap();
    half_sent
        .write_all(b"POST /callback HTTP/1.1\r\nHost: x\r\nContent-Le")
        .await
        .unwrap();
    first.shutdown().await;
    let second = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("the standby took over despite the half-sent request")
        .unwrap()
        .unwrap();
    assert!(second.leader().is_some_and(|l| l.is_held()));
    second.shutdown().await;
    emu.shutdown().await;
}

/// The backend and start of the statement waiting for this schema's leader lock, if one is.
async fn lock_waiter(schema: &PgSchema) -> Option<(i32, std::time::SystemTime)> {
    schema
        .admin
        .query_opt(
            "SELECT a.pid, a.query_start FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND NOT l.granted AND l.classid = 7428102 \
             AND l.objid = hashtext($1)::oid",
            &[&schema.name()],
        )
        .await
        .unwrap()
        .map(|r| (r.get(0), r.get(1)))
}

#[tokio::test]
async fn a_postgres_standby_waits_on_one_connection_and_takes_over_without_polling() {
    let Some((schema, emu, _dir, mut config)) = on_postgres().await else {
        return;
    };
    let first = start(&emu, config.clone()).await;

    // Each wait for the lock ends after `standby_poll`; the next one is asked on the same
    // connection (same backend), not a new one.
    config.storage.standby_poll = Duration::from_millis(100);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let second = tokio::spawn(Service::start_on(config.clone(), listener));
    let seen = std::sync::Mutex::new(Vec::new());
    wait_for(
        "the standby to ask for the lock again",
        Duration::from_secs(15),
        || async {
            let waiter = lock_waiter(&schema).await;
            let mut seen = seen.lock().unwrap();
            if let Some(waiter) = waiter {
                if !seen.contains(&waiter) {
                    seen.push(waiter);
                }
            }
            seen.len() >= 3
        },
    )
    .await;
    let seen = seen.into_inner().unwrap();
    let backends: std::collections::HashSet<i32> = seen.iter().map(|(pid, _)| *pid).collect();
    assert_eq!(
        backends.len(),
        1,
        "one connection for every attempt: {seen:?}"
    );
    second.abort();
    let _ = second.await;

    // With a poll far longer than the test, the standby still leads as soon as the leader's
    // lock is released: the server hands it the lock it is waiting for.
    config.storage.standby_poll = Duration::from_secs(3600);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let third = tokio::spawn(Service::start_on(config, listener));
    wait_for("the standby to wait", Duration::from_secs(15), || async {
        lock_waiter(&schema).await.is_some()
    })
    .await;
    first.shutdown().await;
    let third = tokio::time::timeout(Duration::from_secs(30), third)
        .await
        .expect("the standby took over long before its poll")
        .unwrap()
        .unwrap();
    assert!(third.leader().is_some_and(|l| l.is_held()));
    third.shutdown().await;
    emu.shutdown().await;
    schema.drop().await;
}

#[tokio::test]
async fn a_postgres_standby_answers_callbacks_and_the_leader_pulls_at_once() {
    let Some(url) = require_env("DATABASE_URL") else {
        return;
    };
    let schema = PgSchema::create(&url).await;
    let emu = emulator().await;
    let sink = Sink::start().await;
    let kf = emu.emulator().create_account("relay");
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&emu, &dir.path().join("unused.db"), Some(&sink.url));
    config.storage.db = Some(schema.url.clone());
    config.storage.standby_poll = Duration::from_millis(100);
    config.wechat.accounts = vec![kf.clone().into()];
    // No safety pull: only a callback can bring the messages in.
    config.pull.safety_interval = Duration::ZERO;
    let leader = start(&emu, config.clone()).await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let standby_url = format!("http://{}", listener.local_addr().unwrap());
    let standby = tokio::spawn(Service::start_on(config.clone(), listener));
    let http = reqwest::Client::new();
    wait_for("the standby answers", Duration::from_secs(10), || async {
        http.get(format!("{standby_url}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    // WeChat's callbacks now reach the standby only.
    emu.emulator()
        .set_callback_url(Some(format!("{standby_url}/callback")));
    let sent_before = emu.emulator().state_snapshot()["counters"]["callbacks_sent"]
        .as_u64()
        .unwrap_or(0);
    let expected = send_texts(&emu, &kf, "wmRelay", 3);
    wait_for(
        "delivered by the leader after the standby's relay",
        Duration::from_secs(15),
        || async { sink.acked_count() >= expected.len() },
    )
    .await;
    let snapshot = emu.emulator().state_snapshot();
    assert!(
        snapshot["counters"]["callbacks_sent"].as_u64().unwrap_or(0) > sent_before,
        "the standby received the callbacks: {}",
        snapshot["counters"]
    );
    assert_eq!(
        snapshot["counters"]["callbacks_failed"]
            .as_u64()
            .unwrap_or(0),
        0,
        "every callback answered 200"
    );
    assert_all_delivered_once(&leader, &sink, &expected).await;
    assert!(!standby.is_finished(), "still standing by");
    standby.abort();
    leader.shutdown().await;
    emu.shutdown().await;
    schema.drop().await;
}
