//! Schema changes on source tables while workers run, and shutdown during a long refresh: a
//! clear error or a re-plan, never a crash loop, never a blocked write, and the TVIEWs converge.

use pg_tviews_bgw_e2e::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn source_ddl_while_writers_and_the_worker_run() {
    let cluster = Cluster::start("ddl", &[]);
    let mut db = cluster.blog("app", 50, 500, 2);
    wait_drained(&mut db);
    let worker = worker_pid(&mut db, "app").expect("a drainer runs");
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_blog_writers(&cluster, "app", 2, (50, 500), &stop);

    // Columns the views do not read come and go: kept plans are re-planned.
    db.batch_execute("ALTER TABLE tb_post ADD COLUMN extra int NOT NULL DEFAULT 7")
        .unwrap();
    db.batch_execute("UPDATE tb_post SET extra = 8 WHERE pk_post <= 20")
        .unwrap();
    db.batch_execute("ALTER TABLE tb_post DROP COLUMN extra")
        .unwrap();
    // A column a view reads is renamed: the views follow (they reference columns by number).
    db.batch_execute("ALTER TABLE tb_user RENAME COLUMN karma TO reputation")
        .unwrap();
    // Retyping a column a view reads is refused by PostgreSQL itself, with a clear error.
    let refused = db
        .batch_execute("ALTER TABLE tb_post ALTER COLUMN votes TYPE bigint")
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Some(&postgres::error::SqlState::FEATURE_NOT_SUPPORTED),
        "{refused}"
    );
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    converge(&mut db, &BLOG_ENTITIES, "after column changes");

    // A captured foreign key is renamed: writes keep working (never blocked by the capture
    // trigger), tv_post falls back to full refreshes for comment changes, with a WARNING.
    db.batch_execute("ALTER TABLE tb_comment RENAME COLUMN fk_post TO fk_article")
        .unwrap();
    db.batch_execute("UPDATE tb_comment SET body = 'after the rename' WHERE pk_comment <= 10")
        .unwrap();
    db.batch_execute("DELETE FROM tb_comment WHERE pk_comment = 11")
        .unwrap();
    converge(&mut db, &BLOG_ENTITIES, "after renaming a captured column");
    assert!(
        log_lines(&cluster, "captured column \"fk_post\" no longer exists") > 0,
        "the writer was told why and what to do"
    );
    assert_eq!(
        worker_pid(&mut db, "app"),
        Some(worker),
        "the worker never crashed or restarted"
    );
}

#[test]
fn fast_shutdown_interrupts_a_long_refresh() {
    let cluster = Cluster::start("fast-stop", &[]);
    let mut db = cluster.create_database("app");
    // Refreshing a row titled 'slow' takes two minutes. pg_sleep is volatile: such a
    // definition is accepted only with an explicit reconcile interval.
    db.batch_execute(
        "CREATE EXTENSION pg_tviews_bgw;
         CREATE TABLE tb_slow (pk_slow bigint PRIMARY KEY, title text NOT NULL);
         INSERT INTO tb_slow SELECT g, 'fast' FROM generate_series(1, 5) g;
         SELECT pg_tviews_create('tv_slow', $$
             SELECT pk_slow, jsonb_build_object('title', title,
                    'paused', (SELECT pg_sleep(CASE WHEN title = 'slow' THEN 120 ELSE 0 END))::text) AS data
             FROM tb_slow$$, reconcile_interval => '1 day');",
    )
    .unwrap();
    wait_drained(&mut db);
    db.batch_execute("UPDATE tb_slow SET title = 'slow' WHERE pk_slow = 1")
        .unwrap();
    eventually(
        "the worker is inside the slow refresh",
        Duration::from_secs(30),
        || {
            db.query_one(
            "SELECT coalesce(current_tview::text, '') FROM pg_tviews_worker_status WHERE database = 'app'",
            &[],
        )
        .unwrap()
        .get::<_, String>(0)
            == "tv_slow"
        },
    );
    // Applies at the next start: the recovery must not replay the slow row before it is fixed.
    db.batch_execute("ALTER SYSTEM SET pg_tviews_bgw.enabled = off")
        .unwrap();
    drop(db);
    let started = Instant::now();
    cluster.stop_fast();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(30),
        "fast shutdown waited {took:?} for a refresh that needs 120 s"
    );
    cluster.start_again();
    let mut db = cluster.connect("app");
    db.batch_execute("UPDATE tb_slow SET title = 'fast again' WHERE pk_slow = 1")
        .unwrap();
    enable_draining(&mut db);
    converge(&mut db, &["slow"], "after the restart");
}
