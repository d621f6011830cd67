//! Nothing committed is lost when shared memory is lost (crash re-initialisation, restart), and
//! TVIEWs stay correct without shared_preload_libraries (synchronous fallback).

use pg_tviews_bgw_e2e::*;
use std::time::Duration;

/// Turns draining off so committed keys sit in the ring, then writes.
fn queue_unapplied_changes(db: &mut postgres::Client) {
    disable_draining(&mut *db);
    db.batch_execute("UPDATE tb_post SET votes = votes + 10 WHERE pk_post % 2 = 0; DELETE FROM tb_post WHERE pk_post % 9 = 0")
        .unwrap();
    assert!(
        differences(&mut *db, "post") > 0,
        "changes are queued, not applied yet"
    );
    let pending: i64 = db
        .query_one("SELECT pending FROM pg_tviews_queue_status", &[])
        .unwrap()
        .get(0);
    assert!(pending > 0);
    db.batch_execute("ALTER SYSTEM RESET pg_tviews_bgw.enabled")
        .unwrap();
}

#[test]
fn queued_keys_survive_a_backend_crash() {
    let cluster = Cluster::start("crash", &["restart_after_crash = on"]);
    let mut db = cluster.database_with_tview("app", 100);
    wait_drained(&mut db);
    queue_unapplied_changes(&mut db);
    // kill -9 of a client backend makes the postmaster re-initialize shared memory.
    let victim = cluster.connect("app");
    let pid: i32 = db.query_one("SELECT pid FROM pg_stat_activity WHERE application_name = 'e2e' AND pid <> pg_backend_pid() LIMIT 1", &[])
        .unwrap()
        .get(0);
    drop(db);
    let mut db = cluster.crash_backend(pid, "app");
    drop(victim);
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
    eventually(
        "TVIEW converged after crash",
        Duration::from_secs(30),
        || differences(&mut db, "post") == 0,
    );
    assert!(
        cluster.log().contains("terminated by signal 9"),
        "the crash really happened"
    );
}

#[test]
fn queued_keys_survive_a_restart() {
    let cluster = Cluster::start("restart", &[]);
    let mut db = cluster.database_with_tview("app", 100);
    wait_drained(&mut db);
    queue_unapplied_changes(&mut db);
    drop(db);
    cluster.restart();
    let mut db = cluster.connect("app");
    eventually(
        "TVIEW converged after restart",
        Duration::from_secs(30),
        || differences(&mut db, "post") == 0,
    );
}

#[test]
fn without_preload_tviews_refresh_synchronously() {
    let cluster = Cluster::start("nopreload", &["shared_preload_libraries = ''"]);
    let mut db = cluster.database_with_tview("app", 20);
    db.batch_execute("UPDATE tb_post SET votes = 3 WHERE pk_post < 10; DELETE FROM tb_post WHERE pk_post = 15; INSERT INTO tb_post (title) VALUES ('n')")
        .unwrap();
    // No worker exists: the rows are already correct when the statement returns.
    assert_eq!(differences(&mut db, "post"), 0);
    db.batch_execute("TRUNCATE tb_post").unwrap();
    assert_eq!(differences(&mut db, "post"), 0);
    let shared: bool = db
        .query_one("SELECT shared_memory FROM pg_tviews_stats", &[])
        .unwrap()
        .get(0);
    assert!(!shared);
}

#[test]
fn prepared_transactions_survive_a_restart_and_publish_on_commit_prepared() {
    let cluster = Cluster::start("twophase", &["max_prepared_transactions = 4"]);
    let mut db = cluster.database_with_tview("app", 30);
    wait_drained(&mut db);
    db.batch_execute(
        "BEGIN; UPDATE tb_post SET title = 'two-phase' WHERE pk_post <= 10; PREPARE TRANSACTION 'p1';
         BEGIN; DELETE FROM tb_post WHERE pk_post > 25; PREPARE TRANSACTION 'p2';",
    )
    .unwrap();
    assert_eq!(
        differences(&mut db, "post"),
        0,
        "prepared changes are not visible yet"
    );
    drop(db);
    cluster.restart();
    let mut db = cluster.connect("app");
    db.batch_execute("COMMIT PREPARED 'p1'").unwrap();
    db.batch_execute("ROLLBACK PREPARED 'p2'").unwrap();
    eventually(
        "committed prepared changes applied",
        Duration::from_secs(15),
        || differences(&mut db, "post") == 0,
    );
    let titles: i64 = db
        .query_one(
            "SELECT count(*) FROM tv_post WHERE data->>'title' = 'two-phase'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(titles, 10);
    let rows: i64 = db
        .query_one("SELECT count(*) FROM tv_post", &[])
        .unwrap()
        .get(0);
    assert_eq!(rows, 30, "the rolled-back deletes never reach the TVIEW");
}
