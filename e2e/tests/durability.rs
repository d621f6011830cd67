//! Nothing committed is lost, in both durability modes (`journal`: replay; `none`: full
//! reconcile): a queue overflow, a client backend killed mid-load (the postmaster
//! re-initializes shared memory), a drainer killed, an immediate shutdown right after a bulk
//! commit; and the journal is truncated once applied. Every test ends with an independent
//! EXCEPT ALL comparison of each TVIEW with its defining query.

use pg_tviews_bgw_e2e::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const MODES: [&str; 2] = ["journal", "none"];

fn durability(mode: &str) -> String {
    format!("pg_tviews_bgw.durability = {mode}")
}

/// What the recovery after a loss of shared memory logs in each mode.
fn recovery_line(mode: &str) -> &'static str {
    if mode == "journal" {
        "journaled keys"
    } else {
        "reconciled"
    }
}

fn counter(db: &mut postgres::Client, column: &str) -> i64 {
    db.query_one(&format!("SELECT {column} FROM pg_tviews_stats"), &[])
        .unwrap()
        .get(0)
}

#[test]
fn one_statement_overflowing_a_1024_key_queue_converges() {
    for mode in MODES {
        let cluster = Cluster::start(
            &format!("overflow-{mode}"),
            &[
                &durability(mode),
                "pg_tviews_bgw.queue_size = 1024",
                "pg_tviews_bgw.batch_size = 10000",
            ],
        );
        let mut db = cluster.blog("app", 2_000, 100_000, 0);
        wait_drained(&mut db);
        let (overflowed, recoveries) = (
            counter(&mut db, "overflowed"),
            counter(&mut db, "recoveries"),
        );
        let lines = log_lines(&cluster, recovery_line(mode));
        db.batch_execute("UPDATE tb_post SET votes = votes + 1, title = title || '!'")
            .unwrap();
        wait_drained(&mut db);
        converge(&mut db, &BLOG_ENTITIES, mode);
        assert!(
            counter(&mut db, "overflowed") - overflowed >= 100_000,
            "{mode}: 100k keys cannot fit a 1024-key ring"
        );
        assert!(counter(&mut db, "recoveries") > recoveries, "{mode}");
        assert!(
            log_lines(&cluster, recovery_line(mode)) > lines,
            "{mode}: recovered by {}",
            recovery_line(mode)
        );
    }
}

#[test]
fn a_client_backend_killed_mid_load_loses_nothing() {
    for mode in MODES {
        let cluster = Cluster::start(
            &format!("kill-client-{mode}"),
            &[&durability(mode), "restart_after_crash = on"],
        );
        let mut db = cluster.blog("app", 100, 1_000, 2);
        wait_drained(&mut db);
        let stop = Arc::new(AtomicBool::new(false));
        let writers = start_blog_writers(&cluster, "app", 4, (100, 1_000), &stop);
        eventually("load under way", Duration::from_secs(30), || {
            counter(&mut db, "published_txns") > 200
        });
        // From here on, committed keys stay unapplied in shared memory: the crash must not
        // lose them.
        disable_draining(&mut db);
        eventually("unapplied keys queued", Duration::from_secs(30), || {
            BLOG_ENTITIES.iter().any(|e| differences(&mut db, e) > 0)
        });
        let victim: i32 = db
            .query_one(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'e2e' \
                 AND pid <> pg_backend_pid() AND state = 'active' LIMIT 1",
                &[],
            )
            .or_else(|_| {
                db.query_one(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = 'e2e' \
                     AND pid <> pg_backend_pid() LIMIT 1",
                    &[],
                )
            })
            .unwrap()
            .get(0);
        drop(db);
        let lines = log_lines(&cluster, recovery_line(mode));
        let mut db = cluster.crash_backend(victim, "app");
        stop.store(true, Ordering::Relaxed);
        let committed: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
        assert!(committed > 0);
        enable_draining(&mut db);
        converge(&mut db, &BLOG_ENTITIES, mode);
        assert!(
            log_lines(&cluster, recovery_line(mode)) > lines,
            "{mode}: recovered by {}",
            recovery_line(mode)
        );
    }
}

#[test]
fn a_drainer_killed_with_sigkill_loses_nothing() {
    let cluster = Cluster::start("kill-drainer", &["restart_after_crash = on"]);
    let mut db = cluster.blog("app", 100, 20_000, 0);
    wait_drained(&mut db);
    let worker = worker_pid(&mut db, "app").expect("a drainer runs");
    db.batch_execute("UPDATE tb_post SET votes = votes + 1")
        .unwrap();
    drop(db);
    let mut db = cluster.crash_backend(worker, "app");
    converge(&mut db, &BLOG_ENTITIES, "after SIGKILL of the drainer");
    eventually("a new drainer", Duration::from_secs(30), || {
        worker_pid(&mut db, "app").is_some_and(|p| p != worker)
    });
}

#[test]
fn an_immediate_shutdown_right_after_a_bulk_commit_loses_nothing() {
    for mode in MODES {
        let cluster = Cluster::start(&format!("immediate-{mode}"), &[&durability(mode)]);
        let mut db = cluster.blog("app", 200, 20_000, 1);
        wait_drained(&mut db);
        db.batch_execute(
            "UPDATE tb_post SET votes = votes + 7 WHERE pk_post % 3 = 0;
             UPDATE tb_user SET name = name || '*' WHERE pk_user % 2 = 0;
             DELETE FROM tb_comment WHERE pk_comment % 5 = 0;",
        )
        .unwrap();
        drop(db);
        cluster.stop_immediate();
        cluster.start_again();
        let mut db = cluster.connect("app");
        converge(&mut db, &BLOG_ENTITIES, mode);
    }
}

#[test]
fn journal_tables_are_truncated_once_their_keys_are_applied() {
    let cluster = Cluster::start(
        "journal-rotation",
        &[
            "pg_tviews_bgw.journal_rotate_interval = 100",
            "restart_after_crash = on",
        ],
    );
    let mut db = cluster.blog("app", 50, 500, 1);
    wait_drained(&mut db);
    let truncations = counter(&mut db, "journal_truncations");
    let mut rng = Rng::new(7);
    eventually(
        "journal tables rotated and truncated",
        Duration::from_secs(30),
        || {
            for _ in 0..20 {
                random_blog_write(&mut db, &mut rng, 50, 500).unwrap();
            }
            counter(&mut db, "journal_truncations") >= truncations + 3
        },
    );
    wait_drained(&mut db);
    // Rows written after the last rotation are still there: a crash now replays them.
    disable_draining(&mut db);
    db.batch_execute("UPDATE tb_post SET votes = votes + 100 WHERE pk_post <= 50")
        .unwrap();
    let states: Vec<String> = db
        .query(
            "SELECT state FROM pg_tviews_journal_status ORDER BY journal_table",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(states.iter().any(|s| s == "current"), "{states:?}");
    let victim: i32 = db.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let lines = log_lines(&cluster, "journaled keys");
    let mut db = cluster.crash_backend(victim, "app");
    enable_draining(&mut db);
    converge(&mut db, &BLOG_ENTITIES, "after replaying a rotated journal");
    assert!(log_lines(&cluster, "journaled keys") > lines);
}
