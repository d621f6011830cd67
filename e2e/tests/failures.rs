//! Invariant 5: a failing refresh never stops the pipeline. The failing TVIEW's keys are
//! retried with backoff, then dead-lettered; other keys and TVIEWs keep flowing; the worker
//! never exits. Pause/resume parks keys durably.

use pg_tviews_bgw_e2e::*;
use postgres::Client;
use std::time::Duration;

fn setup(cluster: &Cluster) -> Client {
    let mut db = cluster.create_database("app");
    db.batch_execute(
        "CREATE EXTENSION pg_tviews_bgw;
         CREATE TABLE tb_post (pk_post int PRIMARY KEY, votes int NOT NULL, title text NOT NULL);
         CREATE TABLE tb_tag (pk_tag int PRIMARY KEY, name text NOT NULL);
         INSERT INTO tb_post SELECT g, g, 'post ' || g FROM generate_series(1, 20) g WHERE g <> 13;
         INSERT INTO tb_tag SELECT g, 'tag ' || g FROM generate_series(1, 5) g;
         -- Fails for any post with 13 votes (division by zero): a poison row.
         SELECT pg_tviews_create('tv_post', $$SELECT pk_post,
             jsonb_build_object('title', title, 'ratio', 100 / (votes - 13)) AS data FROM tb_post$$);
         SELECT pg_tviews_create('tv_tag', $$SELECT pk_tag, jsonb_build_object('name', name) AS data FROM tb_tag$$);",
    )
    .unwrap();
    wait_drained(&mut db);
    db
}

fn dump(db: &mut Client) -> String {
    db.query("SELECT format('%s %s %s %s %s', tview_oid::regclass, kind, key, reason, attempts) FROM pg_tview_deferred", &[])
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

fn deferred(db: &mut Client, reason: &str) -> i64 {
    db.query_one(
        "SELECT count(*) FROM pg_tview_deferred WHERE reason = $1",
        &[&reason],
    )
    .unwrap()
    .get(0)
}

#[test]
fn a_failing_refresh_is_retried_then_dead_lettered_while_others_flow() {
    let cluster = Cluster::start("poison", &["pg_tviews_bgw.max_retries = 2"]);
    let mut db = setup(&cluster);
    let pid = worker_pid(&mut db, "app").unwrap();

    // One transaction: a poison key for tv_post, good keys for tv_post and tv_tag.
    db.batch_execute(
        "BEGIN; UPDATE tb_post SET votes = 13 WHERE pk_post = 5;
                UPDATE tb_post SET title = 'fine' WHERE pk_post = 6;
                UPDATE tb_tag SET name = 'renamed' WHERE pk_tag = 1; COMMIT;",
    )
    .unwrap();
    eventually(
        "the other TVIEW is refreshed",
        Duration::from_secs(30),
        || differences(&mut db, "tag") == 0,
    );
    // No wait claims the database is current while a key is retried or dead-lettered.
    let current = wait_says_current(&mut db, "1s");
    assert!(
        !current,
        "pg_tviews_wait while the poison key is not applied"
    );
    eventually(
        "the poison key reaches the dead letters",
        Duration::from_secs(30),
        || deferred(&mut db, "dead") == 1,
    );
    let (entity, key, attempts, error): (String, i64, i32, String) = {
        let r = db
            .query_one(
                "SELECT entity, key, attempts, last_error || ' (' || sqlstate || ')' FROM pg_tviews_dead_letters",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2), r.get(3))
    };
    assert_eq!((entity.as_str(), key, attempts), ("post", 5, 2));
    assert!(error.contains("division by zero (22012)"), "{error}");
    let failed: i64 = db
        .query_one(
            "SELECT failed FROM pg_tviews_queue_status WHERE entity = 'post'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(failed >= 2, "each attempt counts as failed, saw {failed}");
    // The good key of the same TVIEW in the same transaction is not held back: the TVIEW
    // differs from its query only where the query itself cannot be computed.
    let title: String = db
        .query_one("SELECT data->>'title' FROM tv_post WHERE pk_post = 6", &[])
        .unwrap()
        .get(0);
    assert_eq!(title, "fine");
    assert_eq!(
        worker_pid(&mut db, "app"),
        Some(pid),
        "the worker never exits on an SQL error"
    );

    // Fixing the data and reviving the dead letter converges everything.
    db.batch_execute("UPDATE tb_post SET votes = 14 WHERE pk_post = 5")
        .unwrap();
    let revived: i64 = db
        .query_one("SELECT pg_tviews_retry_failed('tv_post')", &[])
        .unwrap()
        .get(0);
    assert_eq!(revived, 1);
    wait_drained(&mut db);
    eventually("dead letters cleared", Duration::from_secs(15), || {
        deferred(&mut db, "dead") + deferred(&mut db, "failed") == 0
    });
    assert_eq!(differences(&mut db, "post"), 0);
}

#[test]
fn pause_parks_keys_durably_and_resume_applies_them() {
    let cluster = Cluster::start("pause", &[]);
    let mut db = setup(&cluster);
    db.batch_execute("SELECT pg_tviews_pause('tv_tag')")
        .unwrap();
    db.batch_execute("UPDATE tb_tag SET name = name || '!'; UPDATE tb_post SET title = 'moving' WHERE pk_post = 1")
        .unwrap();
    wait_drained(&mut db);
    assert_eq!(differences(&mut db, "post"), 0, "other TVIEWs keep flowing");
    assert_eq!(
        differences(&mut db, "tag"),
        10,
        "a paused TVIEW is not refreshed"
    );
    let parked: i64 = db
        .query_one(
            "SELECT parked FROM pg_tviews_queue_status WHERE entity = 'tag'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(parked, 5, "{}", dump(&mut db));
    // Parked keys are in a table: they survive a restart.
    drop(db);
    cluster.restart();
    let mut db = cluster.connect("app");
    let resumed: i64 = db
        .query_one("SELECT pg_tviews_resume('tv_tag')", &[])
        .unwrap()
        .get(0);
    // The 5 keys. The restart's recovery replays the journal (durability = journal, the
    // default) instead of queueing a full refresh, so nothing else was parked.
    assert_eq!(resumed, 5, "{}", dump(&mut db));
    eventually("resumed TVIEW converges", Duration::from_secs(15), || {
        differences(&mut db, "tag") == 0 && deferred(&mut db, "paused") == 0
    });
}

/// Sync-mode writers and the worker read paused flags from a per-process cache
/// (`catalog::state`): a pause or resume committed by another session must reach a writer that
/// already cached the flag, from its next transaction on, and the worker's next batch.
#[test]
fn a_pause_in_another_session_reaches_a_sync_writers_next_transaction() {
    let cluster = Cluster::start("pause-cache", &[]);
    let mut db = setup(&cluster);
    db.batch_execute("SELECT pg_tviews_set_mode('tv_tag', 'sync')")
        .unwrap();
    let mut writer = cluster.connect("app");
    let name = |db: &mut Client| -> String {
        db.query_one("SELECT data->>'name' FROM tv_tag WHERE pk_tag = 1", &[])
            .unwrap()
            .get(0)
    };
    // Refreshed in the statement: the writer has read (and cached) "not paused".
    writer
        .batch_execute("UPDATE tb_tag SET name = 'one' WHERE pk_tag = 1")
        .unwrap();
    assert_eq!(name(&mut writer), "one");

    db.batch_execute("SELECT pg_tviews_pause('tv_tag')")
        .unwrap();
    writer
        .batch_execute("UPDATE tb_tag SET name = 'two' WHERE pk_tag = 1")
        .unwrap();
    assert_eq!(
        name(&mut writer),
        "one",
        "the writer's next transaction saw the pause"
    );
    assert_eq!(deferred(&mut db, "paused"), 1, "{}", dump(&mut db));
    // The worker too: its copy of the key (sync writes queue none of the keys they locked,
    // but a paused TVIEW's are parked, not refreshed) stays parked.
    wait_drained(&mut db);
    assert_eq!(name(&mut db), "one", "{}", dump(&mut db));

    let resumed: i64 = db
        .query_one("SELECT pg_tviews_resume('tv_tag')", &[])
        .unwrap()
        .get(0);
    assert_eq!(resumed, 1);
    writer
        .batch_execute("UPDATE tb_tag SET name = 'three' WHERE pk_tag = 1")
        .unwrap();
    assert_eq!(
        name(&mut writer),
        "three",
        "the writer's next transaction saw the resume"
    );
    eventually("parked key applied", Duration::from_secs(15), || {
        deferred(&mut db, "paused") == 0 && differences(&mut db, "tag") == 0
    });
}

#[test]
fn a_read_only_database_dead_letters_its_keys_and_says_why() {
    let cluster = Cluster::start("read-only", &["pg_tviews_bgw.max_retries = 2"]);
    let mut db = setup(&cluster);
    db.batch_execute("ALTER DATABASE app SET default_transaction_read_only = on")
        .unwrap();
    // A session that may still write (the setting is only a default), as a migration would.
    let mut writer = cluster.connect("app");
    writer
        .batch_execute("SET default_transaction_read_only = off")
        .unwrap();
    // The worker re-reads the setting at most once a second (refresh::note_read_only): a
    // write right after the ALTER may still be applied. Write until one is refused (its
    // keys deferred, so the wait is false); rows applied before that are simply current.
    // Bounded by time, not by a count of writes: 20 fast writes fit inside that second.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut refused = false;
    while !refused && std::time::Instant::now() < deadline {
        writer
            .batch_execute("UPDATE tb_tag SET name = name || ' (late)' WHERE pk_tag <= 3")
            .unwrap();
        refused = !wait_says_current(&mut db, "3s");
        if !refused {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    assert!(
        refused,
        "every write for 15 s was applied in a read-only database"
    );
    eventually(
        "the keys become dead letters with SQLSTATE 25006",
        Duration::from_secs(60),
        || {
            db.query_one(
                "SELECT count(*) FROM pg_tviews_dead_letters WHERE entity = 'tag' AND sqlstate = '25006'",
                &[],
            )
            .unwrap()
            .get::<_, i64>(0)
                == 3
        },
    );
    let checks: Vec<(String, String, String)> = db
        .query(
            "SELECT check_name, status, detail FROM pg_tviews_health_check() WHERE status = 'CRITICAL'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let named = |name: &str| checks.iter().find(|(n, _, _)| n == name).cloned();
    let (_, _, read_only) = named("read_only").expect("a read_only CRITICAL");
    assert!(
        read_only.contains("default_transaction_read_only"),
        "{read_only}"
    );
    let (_, _, dead) = named("dead_letters").expect("a dead_letters CRITICAL");
    assert!(dead.contains("tag") && dead.contains("25006"), "{dead}");
    let current = wait_says_current(&mut db, "1s");
    assert!(
        !current,
        "pg_tviews_wait in a read-only database with stale rows"
    );
    // Three stale rows, each counted in both directions.
    assert_eq!(differences(&mut db, "tag"), 6, "nothing was written");

    // Writable again: retried, exact.
    db.batch_execute("ALTER DATABASE app RESET default_transaction_read_only")
        .unwrap();
    let revived: i64 = writer
        .query_one("SELECT pg_tviews_retry_failed()", &[])
        .unwrap()
        .get(0);
    assert_eq!(revived, 3);
    eventually(
        "the revived keys are applied",
        Duration::from_secs(30),
        || deferred(&mut db, "dead") + deferred(&mut db, "failed") == 0,
    );
    wait_drained(&mut db);
    assert_eq!(differences(&mut db, "tag"), 0);
    assert_eq!(differences(&mut db, "post"), 0);
}
