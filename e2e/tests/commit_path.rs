//! Commit-path behaviour that `#[pg_test]` cannot see (it always rolls back): what reaches the
//! shared-memory queue, when, and how many times; and that the worker's refresh converges.

use pg_tviews_bgw_e2e::*;
use std::time::Duration;

#[test]
fn aborted_transactions_publish_nothing() {
    let cluster = Cluster::start("abort", &[]);
    let mut db = cluster.database_with_tview("app", 50);
    wait_drained(&mut db);
    let before = stats(&mut db);

    db.batch_execute("BEGIN; UPDATE tb_post SET votes = votes + 1; DELETE FROM tb_post WHERE pk_post < 5; ROLLBACK;")
        .unwrap();
    // A statement error aborts the transaction too.
    let failed =
        db.batch_execute("BEGIN; UPDATE tb_post SET votes = votes + 1; SELECT 1/0; COMMIT;");
    assert!(failed.is_err());
    db.batch_execute("ROLLBACK").unwrap();
    // Keys of a rolled-back savepoint are dropped; the rest of the transaction publishes.
    db.batch_execute(
        "BEGIN; UPDATE tb_post SET votes = 7 WHERE pk_post = 1;
         SAVEPOINT s; UPDATE tb_post SET votes = 8 WHERE pk_post BETWEEN 2 AND 20; ROLLBACK TO SAVEPOINT s;
         COMMIT;",
    )
    .unwrap();
    wait_drained(&mut db);

    let after = stats(&mut db);
    assert_eq!(
        after[0] - before[0],
        1,
        "only the key outside the rolled-back savepoint is enqueued"
    );
    assert_eq!(
        after[3] - before[3],
        1,
        "only the committed transaction publishes"
    );
    assert_eq!(after[2], before[2], "nothing overflowed");
    assert_eq!(differences(&mut db, "post"), 0);
    let votes: i64 = db
        .query_one(
            "SELECT (data->>'votes')::bigint FROM tv_post WHERE pk_post = 1",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(votes, 7);
}

#[test]
fn committed_keys_are_published_exactly_once_and_applied() {
    let cluster = Cluster::start("once", &[]);
    let mut db = cluster.database_with_tview("app", 100);
    wait_drained(&mut db);
    let before = stats(&mut db);

    // Ten keys, each touched by three statements of one transaction.
    db.batch_execute(
        "BEGIN;
         UPDATE tb_post SET votes = votes + 1 WHERE pk_post <= 10;
         UPDATE tb_post SET votes = votes + 1 WHERE pk_post <= 10;
         UPDATE tb_post SET title = title || '!' WHERE pk_post <= 10;
         COMMIT;",
    )
    .unwrap();
    wait_drained(&mut db);
    let after = stats(&mut db);
    assert_eq!(after[0] - before[0], 10, "each changed key enqueued once");
    assert_eq!(after[3] - before[3], 1, "one publishing transaction");
    assert_eq!(after[1] - before[1], 10, "each enqueued key applied once");
    assert_eq!(differences(&mut db, "post"), 0);

    // Nothing more is applied later: the keys left the queue for good.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(stats(&mut db)[1], after[1]);
}

#[test]
fn insert_update_delete_and_truncate_converge() {
    let cluster = Cluster::start("converge", &[]);
    let mut db = cluster.database_with_tview("app", 200);
    db.batch_execute(
        "INSERT INTO tb_post (title) SELECT 'more ' || g FROM generate_series(1, 50) g;
         UPDATE tb_post SET title = 'edited', votes = votes + 3 WHERE pk_post % 7 = 0;
         DELETE FROM tb_post WHERE pk_post % 11 = 0;
         UPDATE tb_post SET pk_post = pk_post + 100000 WHERE pk_post = 3;",
    )
    .unwrap();
    wait_drained(&mut db);
    assert_eq!(differences(&mut db, "post"), 0);
    let rows: i64 = db
        .query_one("SELECT count(*) FROM tv_post", &[])
        .unwrap()
        .get(0);
    let expected: i64 = db
        .query_one("SELECT count(*) FROM tb_post", &[])
        .unwrap()
        .get(0);
    assert_eq!(rows, expected);

    db.batch_execute("TRUNCATE tb_post; INSERT INTO tb_post (title) VALUES ('after truncate');")
        .unwrap();
    wait_drained(&mut db);
    assert_eq!(differences(&mut db, "post"), 0);
    let rows: i64 = db
        .query_one("SELECT count(*) FROM tv_post", &[])
        .unwrap()
        .get(0);
    assert_eq!(rows, 1);
}

#[test]
fn concurrent_writers_converge() {
    let cluster = Cluster::start("concurrent", &[]);
    let mut db = cluster.database_with_tview("app", 500);
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let mut client = cluster.connect("app");
            std::thread::spawn(move || {
                for i in 0..150 {
                    let key = ((i * 37 + w * 101) % 500 + 1) as i64;
                    match i % 5 {
                        0 => client.execute("DELETE FROM tb_post WHERE pk_post = $1", &[&key]),
                        1 => client.execute("INSERT INTO tb_post (title) VALUES (format('w%s', $1::bigint))", &[&key]),
                        _ => client.execute(
                            "UPDATE tb_post SET votes = votes + 1, title = title || 'x' WHERE pk_post = $1",
                            &[&key],
                        ),
                    }
                    .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    wait_drained(&mut db);
    assert_eq!(differences(&mut db, "post"), 0);
}

fn worker_batches(db: &mut postgres::Client) -> i64 {
    db.query_one(
        "SELECT batches FROM pg_tviews_worker_status WHERE database = current_database()",
        &[],
    )
    .unwrap()
    .get(0)
}

#[test]
fn queue_depth_returns_to_zero() {
    let cluster = Cluster::start("depth", &["pg_tviews_bgw.batch_size = 50"]);
    let mut db = cluster.database_with_tview("app", 2000);
    wait_drained(&mut db);
    let (before, batches_before) = (stats(&mut db), worker_batches(&mut db));
    db.batch_execute("UPDATE tb_post SET votes = votes + 1")
        .unwrap();
    eventually("queue depth back to 0", Duration::from_secs(30), || {
        let row = db
            .query_one(
                "SELECT q.pending, w.pending, w.state FROM pg_tviews_queue_status q, pg_tviews_worker_status w \
                 WHERE w.database = current_database()",
                &[],
            )
            .unwrap();
        let (per_tview, per_worker, state): (i64, i64, String) =
            (row.get(0), row.get(1), row.get(2));
        per_tview == 0 && per_worker == 0 && state == "idle"
    });
    assert_eq!(differences(&mut db, "post"), 0);
    let (after, batches) = (stats(&mut db), worker_batches(&mut db) - batches_before);
    assert_eq!(
        after[4], before[4],
        "no full refresh replaced the keys: {before:?} -> {after:?}"
    );
    assert_eq!(
        after[1] - before[1],
        2000,
        "every key applied once: {before:?} -> {after:?}"
    );
    let percentiles_ordered: bool = db
        .query_one(
            "SELECT lag_p50_ms > 0 AND lag_p50_ms <= lag_p95_ms AND lag_p95_ms <= lag_p99_ms FROM pg_tviews_queue_status",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        percentiles_ordered,
        "lag percentiles are reported once keys were applied"
    );
    assert!(
        batches >= 2000 / 50,
        "2000 keys at batch_size 50 need at least 40 batches, saw {batches}"
    );
}

#[test]
fn overflow_degrades_to_a_full_refresh() {
    let cluster = Cluster::start("overflow", &["pg_tviews_bgw.queue_size = 16"]);
    let mut db = cluster.database_with_tview("app", 300);
    wait_drained(&mut db);
    let before = stats(&mut db);
    db.batch_execute("UPDATE tb_post SET title = 'bulk ' || pk_post")
        .unwrap();
    wait_drained(&mut db);
    let after = stats(&mut db);
    assert_eq!(
        after[2] - before[2],
        300,
        "300 keys cannot fit a 16-key ring"
    );
    assert!(
        after[4] > before[4],
        "a full refresh replaced the lost keys"
    );
    assert_eq!(differences(&mut db, "post"), 0);
}
