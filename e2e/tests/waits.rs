//! `pg_tviews_wait` never claims TVIEWs are current when nothing applies their keys: in a
//! database that got no worker slot (more databases than `pg_tviews_bgw.max_workers`) it returns
//! false at once, and creating the extension or a TVIEW there warns.

use pg_tviews_bgw_e2e::*;
use std::time::Duration;

#[test]
fn a_database_without_a_worker_gets_warnings_and_false_waits() {
    let cluster = Cluster::start("unserved", &["pg_tviews_bgw.max_workers = 1"]);
    let mut served = cluster.database_with_tview("served", 10);
    eventually(
        "the first database has its worker",
        Duration::from_secs(30),
        || worker_pid(&mut served, "served").is_some(),
    );
    let mut unserved = cluster.create_database("unserved");
    unserved
        .batch_execute(
            "CREATE TABLE tb_item (pk_item int PRIMARY KEY, name text NOT NULL);
             INSERT INTO tb_item SELECT g, 'item ' || g FROM generate_series(1, 10) g;",
        )
        .unwrap();
    drop(unserved);
    // Notices are only visible to a connection with a notice callback; psql reports them.
    let psql = |sql: &str| {
        let out = std::process::Command::new("sudo")
            .current_dir("/")
            .args([
                "-u",
                "postgres",
                &format!("{}/psql", bin()),
                "-X",
                "-v",
                "ON_ERROR_STOP=1",
            ])
            .arg("-h")
            .arg(&cluster.dir)
            .args(["-p", &cluster.port.to_string(), "-d", "unserved", "-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let created = psql("CREATE EXTENSION pg_tviews_bgw");
    assert!(
        created.contains("no pg_tviews_bgw worker can serve this database"),
        "CREATE EXTENSION warns: {created}"
    );
    let tview = psql("SELECT pg_tviews_create('tv_item', 'SELECT pk_item, jsonb_build_object(''n'', name) AS data FROM tb_item')");
    assert!(
        tview.contains("will not be refreshed until a worker slot frees up"),
        "pg_tviews_create warns: {tview}"
    );
    let mut unserved = cluster.connect("unserved");
    unserved
        .batch_execute("UPDATE tb_item SET name = 'changed' WHERE pk_item = 1")
        .unwrap();
    let waited: bool = unserved
        .query_one("SELECT pg_tviews_wait('5s')", &[])
        .unwrap()
        .get(0);
    assert!(
        !waited,
        "pg_tviews_wait must not claim an unserved database is current"
    );
    // One changed row, counted in both directions of the comparison.
    assert_eq!(
        differences(&mut unserved, "item"),
        2,
        "the TVIEW is stale, and was said to be"
    );
    // The served database is unaffected.
    served
        .batch_execute("UPDATE tb_post SET title = 'x' WHERE pk_post = 1")
        .unwrap();
    wait_drained(&mut served);
    assert_eq!(differences(&mut served, "post"), 0);
}
