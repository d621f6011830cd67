//! No head-of-line blocking: one TVIEW whose table is locked (`LOCK TABLE ... ACCESS EXCLUSIVE`,
//! or `SELECT ... FOR UPDATE` on its rows) never stops the others. Its keys are set aside after
//! `pg_tviews_bgw.lock_timeout`, shown as blocked (with who holds the lock), retried every
//! second without counting as failed attempts, and applied once the lock is released.

use pg_tviews_bgw_e2e::*;
use postgres::Client;
use std::time::Duration;

fn blocked(db: &mut Client, entity: &str) -> i64 {
    db.query_one(
        "SELECT blocked FROM pg_tviews_queue_status WHERE entity = $1",
        &[&entity],
    )
    .unwrap()
    .get(0)
}

#[test]
fn a_locked_tview_does_not_hold_up_the_others() {
    // Two retries at most: a lock held for longer must still not turn keys into dead letters.
    let cluster = Cluster::start("blocking", &["pg_tviews_bgw.max_retries = 2"]);
    let mut db = cluster.create_database("app");
    db.batch_execute(
        "CREATE EXTENSION pg_tviews_bgw;
         CREATE TABLE tb_a (pk_a int PRIMARY KEY, v text NOT NULL);
         CREATE TABLE tb_b (pk_b int PRIMARY KEY, v text NOT NULL);
         INSERT INTO tb_a SELECT g, 'a' || g FROM generate_series(1, 50) g;
         INSERT INTO tb_b SELECT g, 'b' || g FROM generate_series(1, 50) g;
         SELECT pg_tviews_create('tv_a', $$SELECT pk_a, jsonb_build_object('v', v) AS data FROM tb_a$$);
         SELECT pg_tviews_create('tv_b', $$SELECT pk_b, jsonb_build_object('v', v) AS data FROM tb_b$$);",
    )
    .unwrap();
    wait_drained(&mut db);

    // 1. tv_a locked ACCESS EXCLUSIVE by another session.
    let mut locker = cluster.connect("app");
    locker
        .batch_execute("BEGIN; LOCK TABLE tv_a IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    db.batch_execute(
        "UPDATE tb_a SET v = v || '!' WHERE pk_a <= 10;
         UPDATE tb_b SET v = v || '!' WHERE pk_b <= 10;
         BEGIN; UPDATE tb_a SET v = 'both' WHERE pk_a = 20; UPDATE tb_b SET v = 'both' WHERE pk_b = 20; COMMIT;",
    )
    .unwrap();
    eventually(
        "tv_b converges while tv_a is locked",
        Duration::from_secs(10),
        || differences(&mut db, "b") == 0,
    );
    eventually(
        "tv_a's keys are shown as blocked",
        Duration::from_secs(10),
        || blocked(&mut db, "a") > 0,
    );
    let (status, detail): (String, String) = db
        .query_one(
            "SELECT status, detail FROM pg_tviews_health_check() WHERE check_name = 'blocked'",
            &[],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(status, "WARNING", "{detail}");
    assert!(
        detail.contains("AccessExclusiveLock held by pid"),
        "the health check names the lock: {detail}"
    );
    // Later writes to other TVIEWs keep flowing; the lock outlives several retries.
    db.batch_execute("UPDATE tb_b SET v = 'later' WHERE pk_b = 30")
        .unwrap();
    eventually("tv_b keeps converging", Duration::from_secs(10), || {
        differences(&mut db, "b") == 0
    });
    std::thread::sleep(Duration::from_secs(4));
    locker.batch_execute("COMMIT").unwrap();
    eventually(
        "tv_a catches up after the lock is released",
        Duration::from_secs(20),
        || differences(&mut db, "a") == 0,
    );
    let dead: i64 = db
        .query_one("SELECT count(*) FROM pg_tviews_dead_letters", &[])
        .unwrap()
        .get(0);
    assert_eq!(dead, 0, "waiting for a lock is not a failed attempt");
    eventually("nothing left deferred", Duration::from_secs(10), || {
        db.query_one("SELECT count(*) FROM pg_tview_deferred", &[])
            .unwrap()
            .get::<_, i64>(0)
            == 0
    });

    // 2. A row of tv_b locked by SELECT ... FOR UPDATE.
    locker
        .batch_execute("BEGIN; SELECT * FROM tv_b WHERE pk_b = 1 FOR UPDATE")
        .unwrap();
    db.batch_execute("UPDATE tb_b SET v = 'row locked' WHERE pk_b = 1; UPDATE tb_a SET v = 'free' WHERE pk_a = 1")
        .unwrap();
    eventually(
        "tv_a converges while a tv_b row is locked",
        Duration::from_secs(10),
        || differences(&mut db, "a") == 0,
    );
    eventually(
        "tv_b's key is shown as blocked",
        Duration::from_secs(10),
        || blocked(&mut db, "b") > 0,
    );
    locker.batch_execute("COMMIT").unwrap();
    eventually("tv_b catches up", Duration::from_secs(20), || {
        differences(&mut db, "b") == 0
    });
    let verify: i64 = db
        .query_one(
            "SELECT (SELECT count(*) FROM pg_tviews_verify('tv_a')) + (SELECT count(*) FROM pg_tviews_verify('tv_b'))",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(verify, 0);
}
