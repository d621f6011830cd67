//! Operator controls of the worker: the rate limit, applied and changed without a restart.

use pg_tviews_bgw_e2e::*;
use std::time::{Duration, Instant};

fn state(db: &mut postgres::Client) -> String {
    db.query_one(
        "SELECT state FROM pg_tviews_worker_status WHERE database = 'app'",
        &[],
    )
    .unwrap()
    .get(0)
}

fn applied(db: &mut postgres::Client) -> i64 {
    db.query_one("SELECT applied FROM pg_tviews_queue_status", &[])
        .unwrap()
        .get(0)
}

#[test]
fn max_rows_per_second_limits_draining_and_reloads_without_restart() {
    let cluster = Cluster::start(
        "ratelimit",
        &[
            "pg_tviews_bgw.max_rows_per_second = 2000",
            "pg_tviews_bgw.batch_size = 500",
        ],
    );
    let mut db = cluster.database_with_tview("app", 20_000);
    wait_drained(&mut db);

    // 20k keys at 2000 keys/s: at least 9 s (the first second's burst is free).
    let started = Instant::now();
    db.batch_execute("UPDATE tb_post SET votes = votes + 1")
        .unwrap();
    eventually(
        "the worker reports rate limited",
        Duration::from_secs(10),
        || state(&mut db) == "rate limited",
    );
    let ok: bool = db
        .query_one("SELECT pg_tviews_wait('60s')", &[])
        .unwrap()
        .get(0);
    assert!(ok);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(9),
        "20k keys at 2000/s drained in {elapsed:?}"
    );
    assert_eq!(differences(&mut db, "post"), 0);

    // A lower limit, then lifting it with ALTER SYSTEM + reload, without a restart.
    db.batch_execute("ALTER SYSTEM SET pg_tviews_bgw.max_rows_per_second = 200")
        .unwrap();
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let before = applied(&mut db);
    db.batch_execute("UPDATE tb_post SET votes = votes + 1")
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let slow = applied(&mut db) - before;
    assert!(
        slow <= 200 + 2 * 200 + 500,
        "at 200 keys/s, 2 s apply at most ~1100 keys, saw {slow}"
    );
    let pid = worker_pid(&mut db, "app");
    db.batch_execute("ALTER SYSTEM RESET pg_tviews_bgw.max_rows_per_second")
        .unwrap();
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
    let ok: bool = db
        .query_one("SELECT pg_tviews_wait('30s')", &[])
        .unwrap()
        .get(0);
    assert!(ok, "unlimited again: the rest drains quickly");
    assert_eq!(
        worker_pid(&mut db, "app"),
        pid,
        "same worker: no restart needed"
    );
    assert_eq!(differences(&mut db, "post"), 0);
}

#[test]
fn coalesce_ms_holds_a_shallow_queue_until_its_oldest_key_is_that_old() {
    let cluster = Cluster::start("coalesce", &["pg_tviews_bgw.coalesce_ms = 400"]);
    let mut db = cluster.database_with_tview("app", 10);
    wait_drained(&mut db);
    let before = applied(&mut db);
    let committed = Instant::now();
    db.batch_execute("UPDATE tb_post SET votes = 7 WHERE pk_post = 1")
        .unwrap();
    eventually("applied", Duration::from_secs(10), || {
        applied(&mut db) > before
    });
    let waited = committed.elapsed();
    assert!(
        waited >= Duration::from_millis(350),
        "applied after {waited:?}, before coalesce_ms elapsed"
    );
    assert_eq!(differences(&mut db, "post"), 0);
}
