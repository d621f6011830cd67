//! Worker life cycle against a real cluster: discovery, restart, reload, exit, standby.

use pg_tviews_bgw_e2e::*;
use std::time::Duration;

fn backend_types(db: &mut postgres::Client) -> Vec<String> {
    db.query("SELECT backend_type FROM pg_stat_activity WHERE backend_type LIKE 'pg_tviews_bgw%' ORDER BY 1", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[test]
fn launcher_and_worker_show_in_pg_stat_activity() {
    let cluster = Cluster::start("types", &[]);
    let mut db = cluster.database_with_tview("app", 1);
    eventually("a launcher and one worker", Duration::from_secs(15), || {
        backend_types(&mut db) == ["pg_tviews_bgw launcher", "pg_tviews_bgw worker"]
    });
}

#[test]
fn worker_comes_back_after_pg_terminate_backend() {
    let cluster = Cluster::start("terminate", &[]);
    let mut db = cluster.database_with_tview("app", 10);
    eventually("worker running", Duration::from_secs(15), || {
        worker_pid(&mut db, "app").is_some()
    });
    let old = worker_pid(&mut db, "app").unwrap();
    db.execute("SELECT pg_terminate_backend($1)", &[&old])
        .unwrap();
    eventually("a new worker pid", Duration::from_secs(15), || {
        worker_pid(&mut db, "app").is_some_and(|p| p != old)
    });
    db.batch_execute("UPDATE tb_post SET votes = 42").unwrap();
    wait_drained(&mut db);
    assert_eq!(differences(&mut db, "post"), 0);
}

#[test]
fn databases_created_after_startup_get_a_worker() {
    let cluster = Cluster::start("discovery", &[]);
    let mut admin = cluster.connect("postgres");
    // Extension created after start-up in a new database.
    let mut db = cluster.database_with_tview("late", 5);
    eventually("worker for late", Duration::from_secs(15), || {
        worker_pid(&mut admin, "late").is_some()
    });
    db.batch_execute("UPDATE tb_post SET votes = 1").unwrap();
    wait_drained(&mut db);
    assert_eq!(differences(&mut db, "post"), 0);

    // A database cloned from a template that already has the extension: found by the scan.
    admin.batch_execute("CREATE DATABASE tmpl; ").unwrap();
    cluster
        .connect("tmpl")
        .batch_execute("CREATE EXTENSION pg_tviews_bgw")
        .unwrap();
    // The template's own worker must leave before CREATE DATABASE can copy it.
    admin
        .batch_execute("UPDATE pg_database SET datistemplate = true WHERE datname = 'tmpl'")
        .unwrap();
    eventually("no worker on a template", Duration::from_secs(15), || {
        worker_pid(&mut admin, "tmpl").is_none()
    });
    admin
        .batch_execute("CREATE DATABASE cloned TEMPLATE tmpl")
        .unwrap();
    eventually("worker for cloned", Duration::from_secs(15), || {
        worker_pid(&mut admin, "cloned").is_some()
    });

    // A database without the extension gets no lasting worker.
    admin.batch_execute("CREATE DATABASE plain").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    eventually("no worker for plain", Duration::from_secs(15), || {
        worker_pid(&mut admin, "plain").is_none()
    });
}

#[test]
fn drop_extension_and_drop_database_end_the_worker() {
    let cluster = Cluster::start("drops", &[]);
    let mut admin = cluster.connect("postgres");
    let mut a = cluster.database_with_tview("a", 5);
    drop(cluster.database_with_tview("b", 5));
    eventually("two workers", Duration::from_secs(15), || {
        worker_pid(&mut admin, "a").is_some() && worker_pid(&mut admin, "b").is_some()
    });
    a.batch_execute("DROP EXTENSION pg_tviews_bgw CASCADE")
        .unwrap();
    eventually("worker for a gone", Duration::from_secs(15), || {
        worker_pid(&mut admin, "a").is_none()
    });
    // DROP DATABASE would fail ("being accessed by other users") if the worker stayed.
    admin.batch_execute("DROP DATABASE b").unwrap();
    assert!(worker_pid(&mut admin, "b").is_none());
    // Neither worker is restarted.
    std::thread::sleep(Duration::from_secs(2));
    assert!(worker_pid(&mut admin, "a").is_none());
    assert_eq!(backend_types(&mut admin), ["pg_tviews_bgw launcher"]);
}

#[test]
fn enabled_setting_is_reloaded_on_sighup() {
    let cluster = Cluster::start("reload", &[]);
    let mut db = cluster.database_with_tview("app", 20);
    wait_drained(&mut db);
    disable_draining(&mut db);
    db.batch_execute("UPDATE tb_post SET votes = 5").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let pending: i64 = db
        .query_one("SELECT pending FROM pg_tviews_queue_status", &[])
        .unwrap()
        .get(0);
    assert_eq!(pending, 20, "keys are kept, not refreshed, while disabled");
    db.batch_execute("ALTER SYSTEM RESET pg_tviews_bgw.enabled")
        .unwrap();
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
    wait_drained(&mut db);
    assert_eq!(differences(&mut db, "post"), 0);
}

#[test]
fn nothing_runs_on_a_standby() {
    let primary = Cluster::start("primary", &["wal_level = replica", "max_wal_senders = 4"]);
    let mut db = primary.database_with_tview("app", 5);
    wait_drained(&mut db);
    let standby = Cluster::start_standby_of(&primary, "standby");
    let mut s = standby.connect("app");
    let in_recovery: bool = s
        .query_one("SELECT pg_is_in_recovery()", &[])
        .unwrap()
        .get(0);
    assert!(in_recovery);
    // Give a (wrongly) started launcher time to show up before asserting it did not.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        backend_types(&mut s).is_empty(),
        "no launcher or worker on a standby"
    );
    // The standby still serves the TVIEW rows replicated from the primary.
    db.batch_execute("UPDATE tb_post SET votes = 9").unwrap();
    wait_drained(&mut db);
    eventually("replicated refresh", Duration::from_secs(15), || {
        s.query_one(
            "SELECT count(*) FROM tv_post WHERE (data->>'votes')::int = 9",
            &[],
        )
        .unwrap()
        .get::<_, i64>(0)
            == 5
    });
}
