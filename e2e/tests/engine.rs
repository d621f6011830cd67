//! DDL spellings, sync mode, and the manual operations of the runbook, against a real cluster.

use pg_tviews_bgw_e2e::*;
use postgres::Client;

const BLOG: &str = "
CREATE TABLE tb_user (pk_user int PRIMARY KEY, id uuid NOT NULL DEFAULT gen_random_uuid(), name text NOT NULL);
CREATE TABLE tb_post (pk_post int PRIMARY KEY, id uuid NOT NULL DEFAULT gen_random_uuid(),
                      fk_user int REFERENCES tb_user, title text NOT NULL);
INSERT INTO tb_user (pk_user, name) SELECT g, 'user ' || g FROM generate_series(1, 10) g;
INSERT INTO tb_post (pk_post, fk_user, title) SELECT g, 1 + g % 10, 'post ' || g FROM generate_series(1, 50) g;
";

fn blog(cluster: &Cluster, extra: &str) -> Client {
    let mut db = cluster.create_database("app");
    db.batch_execute(&format!("CREATE EXTENSION pg_tviews_bgw; {BLOG} {extra}"))
        .unwrap();
    db
}

fn health(db: &mut Client) -> Vec<(String, String)> {
    db.query(
        "SELECT check_name, status FROM pg_tviews_health_check()",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

fn status_of(db: &mut Client, check: &str) -> String {
    health(db)
        .into_iter()
        .find(|(c, _)| c == check)
        .unwrap_or_else(|| panic!("no {check} check"))
        .1
}

#[test]
fn create_table_as_makes_a_tview_and_drop_table_removes_it() {
    let cluster = Cluster::start("ctas", &[]);
    let mut db = blog(&cluster, "");
    db.batch_execute(
        "CREATE TABLE tv_post AS
         SELECT p.pk_post, p.id, p.fk_user, jsonb_build_object('title', p.title, 'author', u.name) AS data
         FROM tb_post p JOIN tb_user u ON u.pk_user = p.fk_user;",
    )
    .unwrap();
    let entities: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_tview_meta WHERE entity = 'post'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(entities, 1, "CREATE TABLE tv_post AS registered a TVIEW");
    let indexes: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE tablename = 'tv_post'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(indexes, 3, "primary key, id and fk_user are indexed");
    db.batch_execute("UPDATE tb_user SET name = 'renamed' WHERE pk_user = 3")
        .unwrap();
    wait_drained(&mut db);
    assert_eq!(differences(&mut db, "post"), 0);

    db.batch_execute("DROP TABLE tv_post").unwrap();
    let leftovers: i64 = db
        .query_one(
            "SELECT (SELECT count(*) FROM pg_tview_meta) + (SELECT count(*) FROM pg_tview_lineage)
                  + (SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'tview\\_%')
                  + (SELECT count(*) FROM pg_class WHERE relname IN ('v_post', 'tv_post'))",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(leftovers, 0, "DROP TABLE tv_post leaves nothing behind");
    // A bad definition through the DDL spelling fails as a whole: no plain tv_ table remains.
    let err = db
        .batch_execute("CREATE TABLE tv_user AS SELECT pk_user, name FROM tb_user")
        .unwrap_err();
    let message = err
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    assert!(message.contains("\"data\""), "{err:?}");
    let plain: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname = 'tv_user'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(plain, 0);
}

#[test]
fn create_table_as_works_in_a_session_that_never_loaded_the_library() {
    // Without preload, a new session has not loaded the library: the event trigger does.
    let cluster = Cluster::start("ctas-noload", &["shared_preload_libraries = ''"]);
    drop(blog(&cluster, ""));
    let mut fresh = cluster.connect("app");
    fresh
        .batch_execute("CREATE TABLE tv_user AS SELECT pk_user, jsonb_build_object('name', name) AS data FROM tb_user")
        .unwrap();
    let registered: bool = fresh
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_tview_meta WHERE entity = 'user')",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(registered);
    fresh
        .batch_execute("UPDATE tb_user SET name = 'x' WHERE pk_user = 1")
        .unwrap();
    assert_eq!(
        differences(&mut fresh, "user"),
        0,
        "refreshed synchronously without preload"
    );
}

#[test]
fn sync_mode_refreshes_inside_the_writing_statement() {
    let cluster = Cluster::start("sync", &[]);
    let mut db = blog(
        &cluster,
        "SELECT pg_tviews_create('tv_post', $$SELECT p.pk_post, jsonb_build_object('title', p.title, 'author', u.name) AS data
                                            FROM tb_post p JOIN tb_user u ON u.pk_user = p.fk_user$$);",
    );
    wait_drained(&mut db);
    let before = stats(&mut db);
    db.batch_execute("SET pg_tviews_bgw.mode = sync").unwrap();
    let mut tx = db.transaction().unwrap();
    tx.batch_execute("UPDATE tb_post SET title = 'seen at once' WHERE pk_post = 7; UPDATE tb_user SET name = 'me' WHERE pk_user = 2")
        .unwrap();
    let title: String = tx
        .query_one("SELECT data->>'title' FROM tv_post WHERE pk_post = 7", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        title, "seen at once",
        "read-your-writes inside the same transaction"
    );
    let author: i64 = tx
        .query_one(
            "SELECT count(*) FROM tv_post WHERE data->>'author' = 'me'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(author, 5);
    tx.commit().unwrap();
    assert!(
        stats(&mut db)[0] > before[0],
        "the author's change reaches tv_post through a lineage rule: those keys still go to the worker"
    );
    wait_drained(&mut db);
    assert_eq!(differences(&mut db, "post"), 0);
    // A post's own row is locked by the writer that recomputes it (refresh::locks): that
    // refresh is the last one, and nothing is queued.
    let before = stats(&mut db);
    db.batch_execute("UPDATE tb_post SET title = 'locked, not queued' WHERE pk_post = 8")
        .unwrap();
    assert_eq!(stats(&mut db)[0], before[0], "a direct key is not queued");
    assert_eq!(differences(&mut db, "post"), 0);
}

#[test]
fn verify_cascade_reinstall_and_health_check() {
    let cluster = Cluster::start("ops", &["pg_tviews_bgw.health_queue_depth = 5"]);
    let mut db = blog(
        &cluster,
        "SELECT pg_tviews_create('tv_post', $$SELECT p.pk_post, p.fk_user, jsonb_build_object('title', p.title, 'author', u.name) AS data
                                            FROM tb_post p JOIN tb_user u ON u.pk_user = p.fk_user$$);",
    );
    wait_drained(&mut db);
    let verify = |db: &mut Client| -> Vec<(i64, String)> {
        db.query("SELECT key, problem FROM pg_tviews_verify('tv_post')", &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    };
    assert!(verify(&mut db).is_empty());
    assert!(
        health(&mut db).iter().all(|(_, s)| s == "OK"),
        "{:?}",
        health(&mut db)
    );

    // Damage the TVIEW behind the extension's back: verify names the rows, cascade repairs them.
    db.batch_execute(
        "UPDATE tv_post SET data = '{}' WHERE fk_user = 4; DELETE FROM tv_post WHERE pk_post = 1",
    )
    .unwrap();
    let damaged = verify(&mut db);
    assert_eq!(damaged.len(), 6, "{damaged:?}");
    assert!(damaged.contains(&(1, "missing".to_string())));
    let staged: i64 = db
        .query_one("SELECT pg_tviews_cascade('tb_user'::regclass::oid, 4)", &[])
        .unwrap()
        .get(0);
    assert_eq!(staged, 1, "one lineage rule of tv_post reads tb_user");
    db.batch_execute("SELECT pg_tviews_cascade('tb_post'::regclass::oid, 1)")
        .unwrap();
    wait_drained(&mut db);
    assert!(verify(&mut db).is_empty());

    // The runbook's orphan clean-up drops triggers on tables not named tb_<entity>.
    db.batch_execute("DROP TRIGGER tview_upd ON tb_user")
        .unwrap();
    assert_eq!(status_of(&mut db, "triggers"), "CRITICAL");
    let reinstalled: i64 = db
        .query_one("SELECT pg_tviews_install_stmt_triggers()", &[])
        .unwrap()
        .get(0);
    assert_eq!(reinstalled, 1);
    assert_eq!(status_of(&mut db, "triggers"), "OK");
    db.batch_execute("UPDATE tb_user SET name = 'after reinstall'")
        .unwrap();
    wait_drained(&mut db);
    assert!(verify(&mut db).is_empty());

    // Queue depth crosses the threshold while draining is off, and recovers.
    disable_draining(&mut db);
    db.batch_execute("UPDATE tb_post SET title = title || '!' WHERE pk_post <= 20")
        .unwrap();
    assert_eq!(status_of(&mut db, "queue_depth"), "WARNING");
    db.batch_execute("ALTER SYSTEM RESET pg_tviews_bgw.enabled")
        .unwrap();
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
    wait_drained(&mut db);
    assert_eq!(status_of(&mut db, "queue_depth"), "OK");
}

/// Every query of the operations runbook, with the placeholders filled in for this schema.
/// Two queries of the seed runbook are invalid SQL on any PostgreSQL (`JOIN LATERAL <view>`
/// needs a subquery); they run here with `LATERAL` removed, as the runbook should say.
#[test]
fn runbook_queries_run() {
    let cluster = Cluster::start("runbook", &[]);
    let mut db = blog(
        &cluster,
        "ALTER TABLE tb_post ADD COLUMN last_updated timestamptz NOT NULL DEFAULT now();",
    );
    let runbook = [
        "SELECT pg_trigger.tgname, pg_trigger.tgrelid::regclass, pg_trigger.tgenabled FROM pg_trigger
         WHERE pg_trigger.tgname LIKE 'tview%' AND pg_trigger.tgrelid = 'tb_post'::regclass",
        "DROP TABLE IF EXISTS tv_post CASCADE",
        "CREATE TABLE tv_post AS SELECT tb_post.pk_post, tb_post.id, tb_post.fk_user,
           jsonb_build_object('id', tb_post.id, 'field', tb_post.title, 'lastUpdated', tb_post.last_updated) as data
         FROM tb_post",
        "SELECT * FROM pg_tview_meta WHERE pg_tview_meta.entity = 'post'",
        "UPDATE tb_post SET title = tb_post.title WHERE tb_post.pk_post = 1",
        "SELECT * FROM tv_post WHERE tv_post.pk_post = 1",
        "SELECT pg_tviews_check_jsonb_ivm()",
        "SELECT pg_tview_meta.entity, array_length(pg_tview_meta.dependencies, 1) as dep_count FROM pg_tview_meta ORDER BY dep_count DESC",
        "SELECT pg_indexes.schemaname, pg_indexes.tablename, pg_indexes.indexname FROM pg_indexes
         WHERE pg_indexes.tablename LIKE 'tv_%' AND pg_indexes.indexname NOT LIKE '%pkey%'",
        "EXPLAIN ANALYZE UPDATE tv_post SET data = tv_post.data WHERE tv_post.pk_post = 1",
        "SELECT pg_tviews_install_stmt_triggers()",
        "SELECT pg_tview_meta.entity, pg_size_pretty(pg_relation_size('tv_' || pg_tview_meta.entity)) as tview_size,
           array_length(pg_tview_meta.dependencies, 1) as cascade_depth
         FROM pg_tview_meta ORDER BY pg_relation_size('tv_' || pg_tview_meta.entity) DESC",
        "SHOW work_mem",
        "SELECT pg_stat_activity.pid, pg_stat_activity.query, pg_stat_activity.state,
           pg_size_pretty(pg_backend_memory_contexts.total_bytes)
         FROM pg_stat_activity JOIN pg_backend_memory_contexts ON true
         WHERE pg_stat_activity.backend_type = 'client backend'",
        "SELECT * FROM pg_extension WHERE pg_extension.extname = 'pg_tviews_bgw'",
        "SELECT pg_tviews_version()",
        "CREATE TABLE pg_tview_meta_backup AS SELECT * FROM pg_tview_meta",
        "SELECT pg_trigger.tgname, pg_class.relname FROM pg_trigger JOIN pg_class ON pg_trigger.tgrelid = pg_class.oid
         WHERE pg_trigger.tgname LIKE 'tview_%'
           AND NOT EXISTS (SELECT 1 FROM pg_tview_meta WHERE pg_class.relname = 'tb_' || pg_tview_meta.entity)",
        "SELECT (SELECT COUNT(*) FROM tb_post) as base_count, (SELECT COUNT(*) FROM tv_post) as tview_count",
        "SELECT tb_post.pk_post FROM tb_post LEFT JOIN tv_post ON tb_post.pk_post = tv_post.pk_post WHERE tv_post.pk_post IS NULL",
        "SELECT tb_post.pk_post, tb_post.last_updated, tv_post.data->>'lastUpdated' as tview_updated
         FROM tb_post JOIN tv_post ON tb_post.pk_post = tv_post.pk_post
         WHERE tb_post.last_updated > (tv_post.data->>'lastUpdated')::timestamptz",
        "SELECT pg_tviews_cascade('tb_post'::regclass::oid, 1)",
        "SELECT pg_stat_activity.pid, pg_stat_activity.query, pg_stat_activity.state, pg_stat_activity.wait_event_type,
           pg_stat_activity.wait_event FROM pg_stat_activity
         WHERE pg_stat_activity.query LIKE '%tview%' OR pg_stat_activity.query LIKE '%tv_%'",
        "EXPLAIN (ANALYZE, BUFFERS) UPDATE tb_post SET title = title WHERE pk_post < 3",
        "SELECT pg_stat_activity.pid, pg_stat_activity.usename, pg_stat_activity.client_addr,
           pg_size_pretty(pg_backend_memory_contexts.total_bytes) as memory_used
         FROM pg_stat_activity JOIN pg_backend_memory_contexts ON true WHERE pg_stat_activity.state = 'active'",
        "SELECT * FROM pg_tviews_health_check()",
        "TRUNCATE pg_tview_meta",
        "INSERT INTO pg_tview_meta SELECT * FROM pg_tview_meta_backup",
        "DO $$ DECLARE rec record; BEGIN
           FOR rec IN SELECT entity FROM pg_tview_meta LOOP EXECUTE 'DROP TABLE tv_' || rec.entity || ' CASCADE'; END LOOP;
         END $$",
        "TRUNCATE pg_tview_meta",
        "TRUNCATE pg_tview_helpers",
        "SELECT * FROM pg_tviews_health_check()",
    ];
    for query in runbook {
        db.batch_execute(query)
            .unwrap_or_else(|e| panic!("runbook query failed: {e:?}\n{query}"));
        if query.starts_with("CREATE TABLE tv_post") || query.starts_with("UPDATE") {
            wait_drained(&mut db);
            assert_eq!(differences(&mut db, "post"), 0, "after: {query}");
        }
    }
    // After the reset procedure nothing of the old TVIEW is left.
    assert!(
        health(&mut db).iter().all(|(_, s)| s == "OK"),
        "{:?}",
        health(&mut db)
    );
}
