//! Never silently stale: every way a write can reach a source converges. Partitions (DML aimed
//! at a partition, TRUNCATE, CREATE/ATTACH/DETACH/DROP of partitions), a self-referential tree
//! (a definition reading other rows of its own root, and a recursive one), two read models of
//! one entity, TVIEWs and sources in an application schema with the extension in a schema of
//! its own, and a join that becomes one-to-many (dead-lettered with its SQLSTATE, never one
//! silently chosen row). Each step is checked with an independent EXCEPT ALL and
//! `pg_tviews_verify`.

use pg_tviews_bgw_e2e::*;
use postgres::Client;
use std::time::Duration;

#[test]
fn every_write_to_a_partitioned_source_converges() {
    let cluster = Cluster::start("partitioned", &[]);
    let mut db = cluster.create_database("app");
    db.batch_execute(
        "CREATE EXTENSION pg_tviews_bgw;
         CREATE TABLE tb_user (pk_user int PRIMARY KEY, name text NOT NULL);
         INSERT INTO tb_user SELECT g, 'user ' || g FROM generate_series(1, 10) g;
         CREATE TABLE tb_event (pk_event int NOT NULL, fk_user int NOT NULL, at date NOT NULL, what text NOT NULL)
             PARTITION BY RANGE (at);
         CREATE TABLE tb_event_2024 PARTITION OF tb_event FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
         CREATE TABLE tb_event_2025 PARTITION OF tb_event FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
         INSERT INTO tb_event SELECT g, 1 + g % 10, date '2024-03-01' + g, 'e' || g FROM generate_series(1, 500) g;
         -- The partitioned table as root, and as a child aggregated into its parent.
         SELECT pg_tviews_create('tv_event', $$
             SELECT e.pk_event, e.fk_user, jsonb_build_object('what', e.what, 'at', e.at, 'user', u.name) AS data
             FROM tb_event e JOIN tb_user u ON u.pk_user = e.fk_user$$);
         SELECT pg_tviews_create('tv_user', $$
             SELECT u.pk_user, jsonb_build_object('name', u.name,
                    'events', (SELECT count(*) FROM tb_event e WHERE e.fk_user = u.pk_user),
                    'last', (SELECT max(e.at) FROM tb_event e WHERE e.fk_user = u.pk_user)) AS data
             FROM tb_user u$$);",
    )
    .unwrap();
    let tviews = ["event", "user"];
    drained_and_exact(&mut db, &tviews, "creation");
    let steps = [
        ("INSERT through the parent", "INSERT INTO tb_event VALUES (1001, 1, '2025-02-01', 'via parent')"),
        ("INSERT aimed at a partition", "INSERT INTO tb_event_2025 VALUES (1002, 2, '2025-03-01', 'direct')"),
        ("UPDATE aimed at a partition", "UPDATE tb_event_2024 SET what = 'changed', fk_user = 3 WHERE pk_event % 7 = 0"),
        ("DELETE aimed at a partition", "DELETE FROM tb_event_2024 WHERE pk_event % 11 = 0"),
        ("UPDATE moving rows across partitions", "UPDATE tb_event SET at = at + 300 WHERE pk_event % 13 = 0 AND at < '2025-01-01'"),
        ("UPDATE of the parent table", "UPDATE tb_user SET name = name || '!' WHERE pk_user <= 3"),
        ("COPY-like multi-row INSERT into a partition", "INSERT INTO tb_event_2024 SELECT g, 1 + g % 10, date '2024-06-01', 'bulk' FROM generate_series(2000, 2100) g"),
        ("TRUNCATE of a partition", "TRUNCATE tb_event_2025"),
        ("a partition created later, written directly",
         "CREATE TABLE tb_event_2026 PARTITION OF tb_event FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
          INSERT INTO tb_event_2026 VALUES (3001, 4, '2026-05-01', 'new partition');
          UPDATE tb_event_2026 SET what = 'new partition, updated'"),
        ("TRUNCATE of a partition created later", "TRUNCATE tb_event_2026"),
        ("ATTACH PARTITION of a filled table",
         "CREATE TABLE tb_event_2023 (pk_event int NOT NULL, fk_user int NOT NULL, at date NOT NULL, what text NOT NULL);
          INSERT INTO tb_event_2023 SELECT g, 1 + g % 10, date '2023-02-01', 'attached' FROM generate_series(4000, 4050) g;
          ALTER TABLE tb_event ATTACH PARTITION tb_event_2023 FOR VALUES FROM ('2023-01-01') TO ('2024-01-01')"),
        ("writes to the attached partition", "UPDATE tb_event_2023 SET what = 'attached, updated' WHERE pk_event % 2 = 0; DELETE FROM tb_event_2023 WHERE pk_event % 5 = 0"),
        ("DETACH PARTITION", "ALTER TABLE tb_event DETACH PARTITION tb_event_2024"),
        ("writes to the detached table are not the TVIEW's", "UPDATE tb_event_2024 SET what = 'detached'; TRUNCATE tb_event_2024"),
        ("DROP TABLE of a partition", "DROP TABLE tb_event_2023"),
        ("TRUNCATE of the parent", "TRUNCATE tb_event"),
        ("INSERT after everything", "INSERT INTO tb_event VALUES (5001, 5, '2025-07-01', 'last'), (5002, 6, '2026-07-01', 'last')"),
    ];
    for (step, sql) in steps {
        db.batch_execute(sql)
            .unwrap_or_else(|e| panic!("{step}: {e}"));
        drained_and_exact(&mut db, &tviews, step);
    }
    // Every partition still carries its capture triggers; the detached table carries none.
    let health: String = db
        .query_one(
            "SELECT status || ': ' || detail FROM pg_tviews_health_check() WHERE check_name = 'triggers'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(health.starts_with("OK"), "{health}");
}

#[test]
fn a_self_referential_tree_converges_at_every_depth() {
    let cluster = Cluster::start("tree", &[]);
    let mut db = cluster.create_database("app");
    db.batch_execute(
        "CREATE EXTENSION pg_tviews_bgw;
         CREATE TABLE tb_category (pk_category int PRIMARY KEY,
             fk_parent_category int REFERENCES tb_category ON DELETE CASCADE, name text NOT NULL);
         -- A tree of depth 5: 1 <- 2..3 <- 4..9 <- 10..27 <- 28..81
         INSERT INTO tb_category VALUES (1, NULL, 'root');
         INSERT INTO tb_category SELECT g, (g + 1) / 3, 'c' || g FROM generate_series(2, 81) g;
         -- The parent's name and the number of children: three reads of the root table.
         SELECT pg_tviews_create('tv_category', $$
             SELECT c.pk_category, c.fk_parent_category,
                    jsonb_build_object('name', c.name, 'parent', p.name,
                        'children', (SELECT count(*) FROM tb_category k WHERE k.fk_parent_category = c.pk_category)) AS data
             FROM tb_category c LEFT JOIN tb_category p ON p.pk_category = c.fk_parent_category$$);
         -- The full path from the root: a recursive definition, any depth.
         SELECT pg_tviews_create('tv_path', $$
             WITH RECURSIVE tree AS (
                 SELECT c.pk_category, c.name::text AS path, 0 AS depth FROM tb_category c WHERE c.fk_parent_category IS NULL
                 UNION ALL
                 SELECT c.pk_category, t.path || '/' || c.name, t.depth + 1
                 FROM tb_category c JOIN tree t ON c.fk_parent_category = t.pk_category)
             SELECT t.pk_category AS pk_path, jsonb_build_object('path', t.path, 'depth', t.depth) AS data FROM tree t$$);",
    )
    .unwrap();
    let tviews = ["category", "path"];
    drained_and_exact(&mut db, &tviews, "creation");
    let lineage: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_tviews_explain('tv_path') WHERE capture = 'resolved' AND reaches LIKE '%WITH RECURSIVE%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        lineage >= 2,
        "tv_path follows its self-reference without bound"
    );
    let steps = [
        (
            "rename the root",
            "UPDATE tb_category SET name = 'ROOT' WHERE pk_category = 1",
        ),
        (
            "rename a node of depth 2",
            "UPDATE tb_category SET name = 'mid' WHERE pk_category = 5",
        ),
        (
            "add a child to a leaf",
            "INSERT INTO tb_category VALUES (100, 40, 'new leaf'), (101, 100, 'deeper')",
        ),
        (
            "re-parent a subtree",
            "UPDATE tb_category SET fk_parent_category = 3 WHERE pk_category = 4",
        ),
        (
            "delete a leaf",
            "DELETE FROM tb_category WHERE pk_category = 81",
        ),
        (
            "delete a subtree (cascade)",
            "DELETE FROM tb_category WHERE pk_category = 2",
        ),
        (
            "rename many nodes",
            "UPDATE tb_category SET name = upper(name) WHERE pk_category % 3 = 0",
        ),
    ];
    for (step, sql) in steps {
        db.batch_execute(sql)
            .unwrap_or_else(|e| panic!("{step}: {e}"));
        drained_and_exact(&mut db, &tviews, step);
    }
}

#[test]
fn two_read_models_of_one_entity_and_an_app_schema_converge() {
    let cluster = Cluster::start("schemas", &[]);
    let mut admin = cluster.create_database("app");
    // The extension in a schema of its own, the application in another, and a database
    // search_path that names neither the extension nor public.
    admin
        .batch_execute(
            "CREATE SCHEMA tviews; CREATE SCHEMA app;
             CREATE EXTENSION pg_tviews_bgw SCHEMA tviews;
             ALTER DATABASE app SET search_path = app;",
        )
        .unwrap();
    drop(admin);
    let mut db = cluster.connect("app");
    db.batch_execute(
        "CREATE TABLE tb_user (pk_user int PRIMARY KEY, name text NOT NULL);
         CREATE TABLE tb_post (pk_post int PRIMARY KEY, fk_user int REFERENCES tb_user, title text NOT NULL);
         INSERT INTO tb_user SELECT g, 'user ' || g FROM generate_series(1, 20) g;
         INSERT INTO tb_post SELECT g, 1 + g % 20, 'post ' || g FROM generate_series(1, 200) g;
         -- The DDL spelling, in the application schema.
         CREATE TABLE app.tv_post AS
             SELECT p.pk_post, p.fk_user, jsonb_build_object('title', p.title, 'author', u.name) AS data
             FROM tb_post p JOIN tb_user u ON u.pk_user = p.fk_user;
         -- A second read model of posts, keyed by an alias of the root's key, by bare entity name.
         SELECT tviews.pg_tviews_create('post_card', $$
             SELECT p.pk_post AS pk_post_card, jsonb_build_object('t', left(p.title, 3)) AS data FROM tb_post p$$);
         -- One in sync mode: refreshed inside the writers' statements, with their search_path.
         SELECT tviews.pg_tviews_create('app.tv_user', $$
             SELECT u.pk_user, jsonb_build_object('name', u.name,
                    'posts', (SELECT count(*) FROM tb_post p WHERE p.fk_user = u.pk_user)) AS data
             FROM tb_user u$$);
         SELECT tviews.pg_tviews_set_mode('tv_user', 'sync');",
    )
    .unwrap();
    let tviews = ["post", "post_card", "user"];
    let converge = |db: &mut Client, step: &str| {
        let ok: bool = db
            .query_one("SELECT tviews.pg_tviews_wait('30s')", &[])
            .unwrap()
            .get(0);
        assert!(ok, "pg_tviews_wait after {step}");
        for entity in tviews {
            assert_eq!(differences(db, entity), 0, "tv_{entity} after {step}");
            let verify: i64 = db
                .query_one(
                    &format!("SELECT count(*) FROM tviews.pg_tviews_verify('tv_{entity}')"),
                    &[],
                )
                .unwrap()
                .get(0);
            assert_eq!(verify, 0, "verify(tv_{entity}) after {step}");
        }
    };
    converge(&mut db, "creation");
    let relations: Vec<String> = db
        .query(
            "SELECT table_oid::regclass::text || ' ' || view_oid::regclass::text FROM tviews.pg_tview_meta ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        relations,
        [
            "tv_post v_post",
            "tv_post_card v_post_card",
            "tv_user v_user"
        ],
        "every TVIEW lives in the application schema"
    );
    for (step, sql) in [
        (
            "retitle",
            "UPDATE tb_post SET title = 'X' || title WHERE pk_post % 3 = 0",
        ),
        (
            "rename authors",
            "UPDATE tb_user SET name = name || '!' WHERE pk_user % 4 = 0",
        ),
        (
            "move posts",
            "UPDATE tb_post SET fk_user = 1 WHERE pk_post % 5 = 0",
        ),
        (
            "insert and delete",
            "INSERT INTO tb_post VALUES (500, 2, 'new'); DELETE FROM tb_post WHERE pk_post % 7 = 0",
        ),
    ] {
        db.batch_execute(sql)
            .unwrap_or_else(|e| panic!("{step}: {e}"));
        converge(&mut db, step);
    }
    // A session whose search_path holds nothing of ours at all still writes (the sync-mode
    // TVIEW refreshes inside its statement) and reads the monitoring functions.
    db.batch_execute(
        "SET search_path = pg_catalog; UPDATE app.tb_user SET name = 'alone' WHERE pk_user = 2",
    )
    .unwrap();
    let name: String = db
        .query_one(
            "SELECT data->>'name' FROM app.tv_user WHERE pk_user = 2",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(name, "alone", "sync mode refreshed inside the statement");
    db.batch_execute("RESET search_path").unwrap();
    converge(&mut db, "a write with an empty search_path");
}

#[test]
fn a_join_that_becomes_one_to_many_is_dead_lettered_never_silently_wrong() {
    let cluster = Cluster::start("fanout", &["pg_tviews_bgw.max_retries = 1"]);
    let mut db = cluster.create_database("app");
    db.batch_execute(
        "CREATE EXTENSION pg_tviews_bgw;
         CREATE TABLE tb_user (pk_user int PRIMARY KEY, name text NOT NULL);
         CREATE TABLE tb_profile (pk_profile int PRIMARY KEY, fk_user int NOT NULL REFERENCES tb_user, bio text NOT NULL);
         INSERT INTO tb_user SELECT g, 'user ' || g FROM generate_series(1, 10) g;
         INSERT INTO tb_profile SELECT g, g, 'bio ' || g FROM generate_series(1, 10) g;
         SELECT pg_tviews_create('tv_user', $$
             SELECT u.pk_user, jsonb_build_object('name', u.name, 'bio', p.bio) AS data
             FROM tb_user u LEFT JOIN tb_profile p ON p.fk_user = u.pk_user$$);",
    )
    .unwrap();
    drained_and_exact(&mut db, &["user"], "creation");
    // A second profile for user 1: the definition now returns two rows for key 1.
    db.batch_execute("INSERT INTO tb_profile VALUES (11, 1, 'second bio'); UPDATE tb_user SET name = 'renamed' WHERE pk_user = 2")
        .unwrap();
    eventually(
        "the key becomes a dead letter",
        Duration::from_secs(60),
        || {
            db.query_one(
            "SELECT count(*) FROM pg_tviews_dead_letters WHERE entity = 'user' AND key = 1 AND sqlstate = '21000'",
            &[],
        )
        .unwrap()
        .get::<_, i64>(0)
            == 1
        },
    );
    let (status, detail): (String, String) = db
        .query_one(
            "SELECT status, detail FROM pg_tviews_health_check() WHERE check_name = 'dead_letters'",
            &[],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(status, "CRITICAL", "{detail}");
    assert!(
        detail.contains("user") && detail.contains("21000"),
        "{detail}"
    );
    let current = wait_says_current(&mut db, "1s");
    assert!(!current, "pg_tviews_wait while a key is dead-lettered");
    // The other keys kept flowing; the row of key 1 was never rewritten from one of two rows.
    let (renamed, bio): (String, String) = db
        .query_one(
            "SELECT (SELECT data->>'name' FROM tv_user WHERE pk_user = 2), (SELECT data->>'bio' FROM tv_user WHERE pk_user = 1)",
            &[],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!((renamed.as_str(), bio.as_str()), ("renamed", "bio 1"));
    // Fixed at the source, retried: exact again.
    db.batch_execute(
        "DELETE FROM tb_profile WHERE pk_profile = 11; SELECT pg_tviews_retry_failed()",
    )
    .unwrap();
    eventually(
        "the dead letter is applied",
        Duration::from_secs(30),
        || {
            db.query_one("SELECT count(*) FROM pg_tview_deferred", &[])
                .unwrap()
                .get::<_, i64>(0)
                == 0
        },
    );
    drained_and_exact(&mut db, &["user"], "fix and retry");
}

#[test]
fn an_opted_in_uncaptured_read_is_reconciled_on_its_interval() {
    let cluster = Cluster::start("reconcile", &[]);
    let mut db = cluster.create_database("app");
    db.batch_execute(
        "CREATE EXTENSION pg_tviews_bgw;
         CREATE TABLE tb_shop (pk_shop int PRIMARY KEY, name text NOT NULL);
         CREATE TABLE stock (fk_shop int, items int);
         INSERT INTO tb_shop SELECT g, 'shop ' || g FROM generate_series(1, 20) g;
         INSERT INTO stock SELECT 1 + g % 20, g FROM generate_series(1, 100) g;
         CREATE MATERIALIZED VIEW mv_stock AS SELECT fk_shop, sum(items) AS items FROM stock GROUP BY 1;
         SELECT pg_tviews_create('tv_shop', $$
             SELECT s.pk_shop, jsonb_build_object('name', s.name, 'items', m.items) AS data
             FROM tb_shop s LEFT JOIN mv_stock m ON m.fk_shop = s.pk_shop$$, reconcile_interval => '1 second');",
    )
    .unwrap();
    drained_and_exact(&mut db, &["shop"], "creation");
    // Captured reads still converge through the queue.
    db.batch_execute("UPDATE tb_shop SET name = 'renamed' WHERE pk_shop = 3")
        .unwrap();
    drained_and_exact(&mut db, &["shop"], "a captured write");
    // The materialized view changes behind every trigger: the reconcile catches up.
    db.batch_execute("INSERT INTO stock VALUES (5, 1000); REFRESH MATERIALIZED VIEW mv_stock")
        .unwrap();
    eventually(
        "the reconcile interval applies the uncaptured change",
        Duration::from_secs(30),
        || differences(&mut db, "shop") == 0,
    );
    let status: String = db
        .query_one(
            "SELECT status FROM pg_tviews_health_check() WHERE check_name = 'uncaptured'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(status, "WARNING");
}
