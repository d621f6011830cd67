//! TVIEWs on a logical-replication subscriber follow the replicated rows: the initial table
//! synchronization (a COPY run by the table-sync worker) and the streamed INSERT, UPDATE,
//! DELETE and TRUNCATE applied by the apply worker, both with `session_replication_role =
//! replica`, where only row triggers enabled for replicas (and ALWAYS triggers) fire. A real
//! publication and subscription between two databases of one cluster.

use pg_tviews_bgw_e2e::*;
use postgres::Client;
use std::time::Duration;

const TABLES: &str = "
CREATE TABLE tb_user (pk_user int PRIMARY KEY, name text NOT NULL);
CREATE TABLE tb_post (pk_post int PRIMARY KEY, fk_user int NOT NULL REFERENCES tb_user, title text NOT NULL);
";

/// Waits until the subscriber's copy of both tables equals the publisher's, then until the
/// TVIEWs equal their queries.
fn replicated(publisher: &mut Client, subscriber: &mut Client, step: &str) {
    let digest = "SELECT (SELECT coalesce(md5(string_agg(u::text, ',' ORDER BY pk_user)), '') FROM tb_user u) || \
                  (SELECT coalesce(md5(string_agg(p::text, ',' ORDER BY pk_post)), '') FROM tb_post p)";
    let want: String = publisher.query_one(digest, &[]).unwrap().get(0);
    eventually(
        &format!("{step}: rows replicated"),
        Duration::from_secs(60),
        || {
            subscriber
                .query_one(digest, &[])
                .unwrap()
                .get::<_, String>(0)
                == want
        },
    );
    wait_drained(subscriber);
    assert_exact(
        subscriber,
        &["post", "user"],
        &format!("{step} (on the subscriber)"),
    );
}

#[test]
fn tviews_on_a_subscriber_follow_replicated_rows() {
    let cluster = Cluster::start(
        "subscriber",
        &[
            "wal_level = logical",
            "max_replication_slots = 4",
            "max_wal_senders = 4",
        ],
    );
    let mut publisher = cluster.create_database("pub");
    publisher
        .batch_execute(&format!(
            "{TABLES}
             INSERT INTO tb_user SELECT g, 'user ' || g FROM generate_series(1, 30) g;
             INSERT INTO tb_post SELECT g, 1 + g % 30, 'post ' || g FROM generate_series(1, 300) g;
             CREATE PUBLICATION blog FOR TABLE tb_user, tb_post;"
        ))
        .unwrap();
    // A subscription to the same cluster cannot create its slot itself (and a slot cannot be
    // created in a transaction that wrote).
    publisher
        .batch_execute("SELECT pg_create_logical_replication_slot('blog', 'pgoutput')")
        .unwrap();
    let mut subscriber = cluster.create_database("sub");
    subscriber
        .batch_execute(&format!(
            "CREATE EXTENSION pg_tviews_bgw;
             {TABLES}
             SELECT pg_tviews_create('tv_post', $$
                 SELECT p.pk_post, p.fk_user, jsonb_build_object('title', p.title, 'author', u.name) AS data
                 FROM tb_post p JOIN tb_user u ON u.pk_user = p.fk_user$$);
             SELECT pg_tviews_create('tv_user', $$
                 SELECT u.pk_user, jsonb_build_object('name', u.name,
                        'posts', (SELECT count(*) FROM tb_post p WHERE p.fk_user = u.pk_user)) AS data
                 FROM tb_user u$$);"
        ))
        .unwrap();
    subscriber
        .batch_execute(&format!(
            "CREATE SUBSCRIPTION blog CONNECTION 'host={} port={} dbname=pub user=postgres' \
             PUBLICATION blog WITH (create_slot = false, slot_name = 'blog')",
            cluster.dir.display(),
            cluster.port
        ))
        .unwrap();
    replicated(
        &mut publisher,
        &mut subscriber,
        "initial table synchronization",
    );
    let steps = [
        ("INSERT", "INSERT INTO tb_user VALUES (31, 'new user'); INSERT INTO tb_post SELECT g, 31, 'new ' || g FROM generate_series(301, 320) g"),
        ("UPDATE of the root", "UPDATE tb_post SET title = 'retitled', fk_user = 2 WHERE pk_post % 9 = 0"),
        ("UPDATE of a parent", "UPDATE tb_user SET name = name || ' (renamed)' WHERE pk_user % 4 = 0"),
        ("DELETE", "DELETE FROM tb_post WHERE pk_post % 10 = 0"),
        ("a multi-statement transaction", "BEGIN; UPDATE tb_post SET fk_user = 3 WHERE pk_post < 20; DELETE FROM tb_post WHERE pk_post = 21; INSERT INTO tb_post VALUES (999, 5, 'late'); COMMIT"),
        ("TRUNCATE", "TRUNCATE tb_post"),
        ("INSERT after TRUNCATE", "INSERT INTO tb_post SELECT g, 1 + g % 31, 'again ' || g FROM generate_series(1, 50) g"),
    ];
    for (step, sql) in steps {
        publisher
            .batch_execute(sql)
            .unwrap_or_else(|e| panic!("{step}: {e}"));
        replicated(&mut publisher, &mut subscriber, step);
    }
    // Writes made on the subscriber itself are captured as usual, without double capture.
    subscriber
        .batch_execute("UPDATE tb_user SET name = 'local' WHERE pk_user = 1")
        .unwrap();
    wait_drained(&mut subscriber);
    assert_eq!(differences(&mut subscriber, "post"), 0);
    assert_eq!(differences(&mut subscriber, "user"), 0);
}
