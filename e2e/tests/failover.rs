//! Failover: a streaming standby promoted right after a committed bulk change that the old
//! primary's worker had not applied starts its own worker and converges: by replaying the
//! journal (`durability = journal`, the journal rows came with the WAL) or by reconciling
//! every TVIEW (`durability = none`, nothing of the old primary's shared memory survives).

use pg_tviews_bgw_e2e::*;
use std::time::Duration;

fn failover(durability: &str) {
    let primary = Cluster::start(
        &format!("failover-{durability}"),
        &[
            "wal_level = replica",
            "max_wal_senders = 4",
            &format!("pg_tviews_bgw.durability = {durability}"),
        ],
    );
    let mut db = primary.database_with_tview("app", 500);
    wait_drained(&mut db);
    let standby = Cluster::start_standby_of(&primary, &format!("promoted-{durability}"));
    // The primary commits a bulk change its worker never applies.
    disable_draining(&mut db);
    db.batch_execute("UPDATE tb_post SET votes = votes + 7; UPDATE tb_post SET title = 'last' WHERE pk_post % 10 = 0")
        .unwrap();
    let target: String = db
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .unwrap()
        .get(0);
    let mut s = standby.connect("app");
    eventually(
        "the standby replayed the bulk change",
        Duration::from_secs(30),
        || {
            s.query_one(
                "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                &[&target],
            )
            .unwrap()
            .get::<_, bool>(0)
        },
    );
    assert!(
        differences(&mut s, "post") > 0,
        "the standby holds the change in tb_post but not yet in tv_post"
    );
    primary.stop_immediate();
    s.batch_execute("SELECT pg_promote()").unwrap();
    eventually(
        "the promoted server's worker converges",
        Duration::from_secs(60),
        || differences(&mut s, "post") == 0,
    );
    let verify: i64 = s
        .query_one("SELECT count(*) FROM pg_tviews_verify('tv_post')", &[])
        .unwrap()
        .get(0);
    assert_eq!(verify, 0);
    // And it keeps going as the new primary.
    s.batch_execute("UPDATE tb_post SET votes = 0 WHERE pk_post <= 50")
        .unwrap();
    wait_drained(&mut s);
    assert_eq!(differences(&mut s, "post"), 0);
}

#[test]
fn a_promoted_standby_replays_the_journal() {
    failover("journal");
}

#[test]
fn a_promoted_standby_reconciles_without_a_journal() {
    failover("none");
}
