//! Read-your-writes tokens: `pg_tviews_write_token()` in the writing transaction,
//! `pg_tviews_wait(token)` from any other session (as through a transaction pooler). The wait
//! covers exactly that transaction's rows and their cascades to dependent TVIEWs, ahead of a
//! backlog the worker is far behind on; it is false on timeout, on a failed refresh and while a
//! prepared transaction is undecided; bad tokens raise with a SQLSTATE.

use pg_tviews_bgw_e2e::*;
use postgres::Client;
use std::time::{Duration, Instant};

fn sqlstate_of(db: &mut Client, sql: &str) -> String {
    let error = db.batch_execute(sql).unwrap_err();
    error
        .as_db_error()
        .unwrap_or_else(|| panic!("{sql}: {error}"))
        .code()
        .code()
        .to_string()
}

fn pending(db: &mut Client) -> i64 {
    db.query_one(
        "SELECT coalesce(sum(pending), 0)::bigint FROM pg_tviews_queue_status",
        &[],
    )
    .unwrap()
    .get(0)
}

/// A TVIEW read by another one: `tv_card` embeds `tv_user`'s row, so a write to `tb_user`
/// reaches `tv_card` only through the refresh of `tv_user` (a cascade).
fn add_card(db: &mut Client) {
    db.batch_execute(
        "SELECT pg_tviews_create('tv_card', $$
             SELECT u.pk_user AS pk_card, u.id, jsonb_build_object('user', u.data) AS data
             FROM tv_user u$$)",
    )
    .unwrap();
}

#[test]
fn a_token_is_applied_ahead_of_the_backlog_with_its_cascades_from_another_session() {
    let cluster = Cluster::start("tokens", &[]);
    let mut db = cluster.blog("app", 50, 2000, 1);
    add_card(&mut db);
    wait_drained(&mut db);
    // 100 rows a second: the backlog below takes the worker about a minute.
    db.batch_execute("ALTER SYSTEM SET pg_tviews_bgw.max_rows_per_second = 100")
        .unwrap();
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    db.batch_execute("UPDATE tb_post SET votes = votes + 1")
        .unwrap();
    let backlog = pending(&mut db);
    assert!(backlog > 1000, "a backlog is queued: {backlog}");
    // Another connection, like a second pooled server connection of the same API.
    let mut reader = cluster.connect("app");
    assert!(
        !wait_says_current(&mut reader, "200ms"),
        "the wait for everything waits for the backlog"
    );
    for round in 1..=5 {
        let name = format!("renamed {round}");
        let started = Instant::now();
        let token = write_with_token(
            &mut db,
            &format!("UPDATE tb_user SET name = '{name}' WHERE pk_user = {round}"),
        );
        assert!(token.starts_with("v1/"), "{token}");
        assert!(
            wait_token(&mut reader, &token, "20s"),
            "round {round}: the token's rows are applied"
        );
        let waited = started.elapsed();
        let row = reader
            .query_one(
                "SELECT (SELECT data->>'name' FROM tv_user WHERE pk_user = $1),
                        (SELECT data->'user'->>'name' FROM tv_card WHERE pk_card = $1),
                        (SELECT count(*) FROM tv_post WHERE fk_user = $1 AND data->>'author' IS DISTINCT FROM $2),
                        (SELECT count(*) FROM tb_post WHERE fk_user = $1)",
                &[&(round as i64), &name],
            )
            .unwrap();
        assert_eq!(
            row.get::<_, Option<String>>(0).as_deref(),
            Some(name.as_str())
        );
        assert_eq!(
            row.get::<_, Option<String>>(1).as_deref(),
            Some(name.as_str()),
            "round {round}: the cascade to tv_card is applied too"
        );
        assert_eq!(
            row.get::<_, i64>(2),
            0,
            "round {round}: every post of the user shows the new author"
        );
        assert!(row.get::<_, i64>(3) > 0);
        // The same token again: still satisfied.
        assert!(wait_token(&mut reader, &token, "0s"));
        eprintln!("round {round}: token waited {waited:?}");
    }
    assert!(
        pending(&mut db) > 0,
        "the backlog is still queued: the tokens did not wait for it"
    );
    // The ring still drains in order; with the limit lifted everything converges.
    db.batch_execute("ALTER SYSTEM RESET pg_tviews_bgw.max_rows_per_second")
        .unwrap();
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
    wait_drained(&mut db);
    assert_exact(
        &mut db,
        &["user", "post", "comment", "card"],
        "tokens and backlog",
    );
}

#[test]
fn tokens_time_out_fail_closed_and_are_checked() {
    let cluster = Cluster::start("tokens-edges", &["max_prepared_transactions = 4"]);
    let mut db = cluster.blog("app", 20, 100, 1);
    let mut other = cluster.connect("app");
    wait_drained(&mut db);

    // A transaction that wrote nothing, an aborted one: nothing to wait for.
    let nothing = write_token(&mut db);
    assert!(wait_token(&mut other, &nothing, "0s"));
    let aborted = {
        let mut tx = db.transaction().unwrap();
        tx.batch_execute("UPDATE tb_user SET name = 'never' WHERE pk_user = 1")
            .unwrap();
        let token = write_token(&mut tx);
        tx.rollback().unwrap();
        token
    };
    assert!(wait_token(&mut other, &aborted, "1s"));

    // Timeout: nothing is applied while draining is off.
    disable_draining(&mut db);
    let token = write_with_token(
        &mut db,
        "UPDATE tb_user SET name = 'late' WHERE pk_user = 2",
    );
    let started = Instant::now();
    assert!(!wait_token(&mut other, &token, "300ms"), "false on timeout");
    assert!(started.elapsed() < Duration::from_secs(5));
    enable_draining(&mut db);
    assert!(wait_token(&mut other, &token, "30s"));
    assert_eq!(
        other
            .query_one("SELECT data->>'name' FROM tv_user WHERE pk_user = 2", &[])
            .unwrap()
            .get::<_, String>(0),
        "late"
    );

    // A refresh that raises: the token is not satisfied (the key is retried, then dead).
    db.batch_execute(
        "CREATE TABLE tb_ratio (pk_ratio bigint PRIMARY KEY, d int NOT NULL);
         INSERT INTO tb_ratio VALUES (1, 1);
         SELECT pg_tviews_create('tv_ratio',
             $$SELECT pk_ratio, jsonb_build_object('r', 100 / d) AS data FROM tb_ratio$$);",
    )
    .unwrap();
    let token = write_with_token(&mut db, "UPDATE tb_ratio SET d = 0 WHERE pk_ratio = 1");
    assert!(
        !wait_token(&mut other, &token, "2s"),
        "a token whose refresh failed is never reported applied"
    );
    db.batch_execute("UPDATE tb_ratio SET d = 4; SELECT pg_tviews_retry_failed()")
        .unwrap();

    // Two-phase commit: undecided is not applied; ROLLBACK PREPARED has nothing to wait for;
    // COMMIT PREPARED (from another session) is waited for like a commit.
    let mut tx = db.transaction().unwrap();
    tx.batch_execute("UPDATE tb_user SET name = 'two-phase' WHERE pk_user = 3")
        .unwrap();
    let prepared = write_token(&mut tx);
    tx.batch_execute("PREPARE TRANSACTION 'p1'").unwrap();
    drop(tx);
    assert!(
        !wait_token(&mut other, &prepared, "300ms"),
        "a prepared transaction's token waits for its outcome"
    );
    other.batch_execute("COMMIT PREPARED 'p1'").unwrap();
    assert!(wait_token(&mut other, &prepared, "30s"));
    assert_eq!(
        other
            .query_one("SELECT data->>'name' FROM tv_user WHERE pk_user = 3", &[])
            .unwrap()
            .get::<_, String>(0),
        "two-phase"
    );
    let mut tx = db.transaction().unwrap();
    tx.batch_execute("UPDATE tb_user SET name = 'rolled back' WHERE pk_user = 4")
        .unwrap();
    let rolled_back = write_token(&mut tx);
    tx.batch_execute("PREPARE TRANSACTION 'p2'").unwrap();
    drop(tx);
    other.batch_execute("ROLLBACK PREPARED 'p2'").unwrap();
    assert!(wait_token(&mut other, &rolled_back, "1s"));

    // Bad tokens.
    assert_eq!(
        sqlstate_of(&mut other, "SELECT pg_tviews_wait('not a token')"),
        "22023"
    );
    let foreign = {
        let mut postgres = cluster.connect("postgres");
        let oid: u32 = postgres
            .query_one(
                "SELECT oid FROM pg_database WHERE datname = 'postgres'",
                &[],
            )
            .unwrap()
            .get(0);
        format!("v1/{oid}/{}", &token.splitn(3, '/').nth(2).unwrap())
    };
    assert_eq!(
        sqlstate_of(&mut other, &format!("SELECT pg_tviews_wait('{foreign}')")),
        "22023",
        "a token of another database"
    );
    let parts: Vec<&str> = token.split('/').collect();
    let future = format!("v1/{}/{}/0/0", parts[1], u64::from(u32::MAX) * 1000);
    assert_eq!(
        sqlstate_of(&mut other, &format!("SELECT pg_tviews_wait('{future}')")),
        "22023",
        "a token of a transaction this server has not seen"
    );
    assert_eq!(
        sqlstate_of(
            &mut other,
            "BEGIN; UPDATE tb_user SET karma = 1 WHERE pk_user = 5;
             SELECT pg_tviews_wait(pg_tviews_write_token());"
        ),
        "55000",
        "waiting for the current transaction's own token"
    );
    other.batch_execute("ROLLBACK").unwrap();
    // The interval form keeps working through the text overload.
    assert!(other
        .query_one("SELECT pg_tviews_wait('5s')", &[])
        .unwrap()
        .get::<_, bool>(0));
    assert_exact(
        &mut db,
        &["user", "post", "comment", "ratio"],
        "token edge cases",
    );
}

/// The race the priority lane must not lose: the ring refreshed the upstream row moments ago
/// (so the token's own refresh finds it current and changes nothing), while that refresh's
/// cascade to the dependent TVIEW still waits behind the backlog. The token must not return
/// before the dependent row is current too.
#[test]
fn a_token_waits_for_a_cascade_the_ring_started_before_it() {
    let cluster = Cluster::start("tokens-race", &[]);
    let mut db = cluster.blog("app", 50, 2000, 1);
    add_card(&mut db);
    wait_drained(&mut db);
    // Ring order: the rename, then a backlog; the worker (held, then limited to 100 rows a
    // second) applies the rename first, and the cascade it publishes lands behind the backlog.
    disable_draining(&mut db);
    db.batch_execute("UPDATE tb_user SET name = 'renamed first' WHERE pk_user = 7")
        .unwrap();
    db.batch_execute("UPDATE tb_post SET votes = votes + 1")
        .unwrap();
    db.batch_execute("ALTER SYSTEM SET pg_tviews_bgw.max_rows_per_second = 100")
        .unwrap();
    enable_draining(&mut db);
    let mut reader = cluster.connect("app");
    eventually(
        "the ring applied the rename to tv_user",
        Duration::from_secs(30),
        || {
            reader
                .query_one("SELECT data->>'name' FROM tv_user WHERE pk_user = 7", &[])
                .unwrap()
                .get::<_, String>(0)
                == "renamed first"
        },
    );
    let card = |db: &mut Client| -> String {
        db.query_one(
            "SELECT data->'user'->>'name' FROM tv_card WHERE pk_card = 7",
            &[],
        )
        .unwrap()
        .get(0)
    };
    assert_ne!(
        card(&mut reader),
        "renamed first",
        "the cascade to tv_card is still queued behind the backlog (the race this test needs)"
    );
    // A write that changes nothing tv_user shows: its token's refresh finds the row current.
    let token = write_with_token(
        &mut db,
        "UPDATE tb_user SET karma = karma WHERE pk_user = 7",
    );
    assert!(wait_token(&mut reader, &token, "20s"));
    assert_eq!(
        card(&mut reader),
        "renamed first",
        "the token's wait covers the cascade of the row it reached"
    );
    db.batch_execute("ALTER SYSTEM RESET pg_tviews_bgw.max_rows_per_second")
        .unwrap();
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
    wait_drained(&mut db);
    assert_exact(&mut db, &["user", "post", "card"], "the cascade race");
}
