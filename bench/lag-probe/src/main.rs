//! Freshness-lag probe for the pg_tviews_bgw benchmark (bench/run.sh).
//!
//! Each probe: UPDATE one tb_post row, setting its title to a unique token (autocommit, so the
//! statement returns after COMMIT), take the time, then poll tv_post on a second connection until
//! the token is visible there, and record commit -> visible. Writes one `t_ms,lag_us` line per
//! probe (t_ms = when the probe committed, relative to the first recorded probe) and prints a
//! one-line summary on stderr.
//!
//! Modes (`--mode`):
//!   poll   (default) the above.
//!   token  read-your-writes: in one transaction UPDATE the title, `SELECT pg_tviews_write_token()`,
//!          COMMIT; then on a second connection `SELECT pg_tviews_wait(token, timeout)` and record
//!          commit -> wait returned; then read tv_post for that row on that second connection. A
//!          read that does not show the write after the wait returned true is a violation.
//!   wait   the same with plain `pg_tviews_wait(timeout)` (no token: waits for everything
//!          committed before it, i.e. the whole backlog) after an autocommit UPDATE.
//! In the wait modes each line also has `wait_ok` (what the wait returned) and `visible` (the
//! read after it showed the write); a false wait or a violation is a finding, not a failure.
//!
//! Exit codes: 0 ok, 1 a query failed or a probe never became visible within --timeout-s (the
//! harness is broken or the TVIEW does not converge), 2 bad arguments.

use postgres::{Client, NoTls};
use std::io::Write;
use std::time::{Duration, Instant};

struct Args {
    conn: String,
    probes: usize,
    warmup: usize,
    max_seconds: f64,
    id_min: i32,
    id_max: i32,
    poll_sleep_us: u64,
    timeout_s: u64,
    seed: u64,
    tag: String,
    out: String,
    mode: Mode,
    wait_timeout_s: f64,
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Poll,
    Token,
    Wait,
}

fn usage() -> ! {
    eprintln!(
        "usage: pg_tviews_lag_probe --conn CONNINFO --out FILE [--probes N] [--warmup N] \
         [--max-seconds S] [--id-min N] [--id-max N] [--poll-sleep-us US] [--timeout-s S] \
         [--seed N] [--tag TEXT] [--mode poll|token|wait] [--wait-timeout-s S]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        conn: String::new(),
        probes: 500,
        warmup: 5,
        max_seconds: 0.0,
        id_min: 1,
        id_max: 1000,
        poll_sleep_us: 200,
        timeout_s: 60,
        seed: 42,
        tag: "probe".into(),
        out: String::new(),
        mode: Mode::Poll,
        wait_timeout_s: 10.0,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let [flag, value] = pair else { usage() };
        let num = |v: &str| v.parse::<f64>().unwrap_or_else(|_| usage());
        match flag.as_str() {
            "--conn" => a.conn = value.clone(),
            "--out" => a.out = value.clone(),
            "--tag" => a.tag = value.clone(),
            "--probes" => a.probes = num(value) as usize,
            "--warmup" => a.warmup = num(value) as usize,
            "--max-seconds" => a.max_seconds = num(value),
            "--id-min" => a.id_min = num(value) as i32,
            "--id-max" => a.id_max = num(value) as i32,
            "--poll-sleep-us" => a.poll_sleep_us = num(value) as u64,
            "--timeout-s" => a.timeout_s = num(value) as u64,
            "--seed" => a.seed = num(value) as u64,
            "--wait-timeout-s" => a.wait_timeout_s = num(value),
            "--mode" => {
                a.mode = match value.as_str() {
                    "poll" => Mode::Poll,
                    "token" => Mode::Token,
                    "wait" => Mode::Wait,
                    _ => usage(),
                }
            }
            _ => usage(),
        }
    }
    if a.conn.is_empty() || a.out.is_empty() || a.id_max < a.id_min {
        usage()
    }
    a
}

/// xorshift64*: a fixed seed gives the same sequence of rows on every run, without a crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    // Nearest rank, like the report script.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("lag-probe: {what}: {e}");
    std::process::exit(1)
}

/// One probe's outcome: when it committed, commit -> visible (poll) or commit -> wait returned
/// (wait modes), and in the wait modes what the wait returned and whether the read after it
/// showed the write.
struct Probe {
    at: Instant,
    lag: Duration,
    wait_ok: bool,
    visible: bool,
}

fn main() {
    let args = parse_args();
    let connect = || Client::connect(&args.conn, NoTls).unwrap_or_else(|e| fail("connect", e));
    // Writer and poller on separate sessions, as an application's write and read paths would be.
    let mut writer = connect();
    let mut reader = connect();
    let update = writer
        .prepare("UPDATE tb_post SET title = $2 WHERE pk_post = $1")
        .unwrap_or_else(|e| fail("prepare update", e));
    let visible = reader
        .prepare("SELECT 1 FROM tv_post WHERE pk_post = $1 AND data->>'title' = $2")
        .unwrap_or_else(|e| fail("prepare poll", e));
    // Prepared only in their own mode: the token functions may not exist in this version.
    let token_stmt = (args.mode == Mode::Token).then(|| {
        writer
            .prepare("SELECT pg_tviews_write_token()")
            .unwrap_or_else(|e| fail("prepare pg_tviews_write_token()", e))
    });
    let wait_stmt = match args.mode {
        Mode::Poll => None,
        Mode::Token => Some(format!(
            "SELECT pg_tviews_wait($1::text, interval '{} seconds')",
            args.wait_timeout_s
        )),
        Mode::Wait => Some(format!(
            "SELECT pg_tviews_wait(interval '{} seconds')",
            args.wait_timeout_s
        )),
    }
    .map(|sql| {
        reader
            .prepare(&sql)
            .unwrap_or_else(|e| fail("prepare pg_tviews_wait", e))
    });

    let mut rng = Rng(args.seed.max(1));
    let span = (args.id_max - args.id_min + 1) as u64;
    let pid = std::process::id();
    let timeout = Duration::from_secs(args.timeout_s);
    let sleep = Duration::from_micros(args.poll_sleep_us);
    let mut probes: Vec<Probe> = Vec::with_capacity(args.probes);
    let started = Instant::now();

    for i in 0..args.warmup + args.probes {
        if args.max_seconds > 0.0 && started.elapsed().as_secs_f64() >= args.max_seconds {
            break;
        }
        let id = args.id_min + (rng.next() % span) as i32;
        let token = format!("{}-{pid}-{i}", args.tag);
        let check_one = |n: u64| {
            if n != 1 {
                fail(
                    "update",
                    format!("pk_post = {id} matched {n} rows, expected 1"),
                );
            }
        };
        let mut write_token: Option<String> = None;
        if let Some(stmt) = &token_stmt {
            // The token is taken inside the writing transaction, after its writes.
            let mut tx = writer.transaction().unwrap_or_else(|e| fail("begin", e));
            check_one(
                tx.execute(&update, &[&id, &token])
                    .unwrap_or_else(|e| fail("update", e)),
            );
            let t: Option<String> = tx
                .query_one(stmt, &[])
                .unwrap_or_else(|e| fail("pg_tviews_write_token()", e))
                .get(0);
            write_token =
                Some(t.unwrap_or_else(|| fail("pg_tviews_write_token()", "returned NULL")));
            tx.commit().unwrap_or_else(|e| fail("commit", e));
        } else {
            // Autocommit: execute() returned after the commit, hence after the keys were published.
            check_one(
                writer
                    .execute(&update, &[&id, &token])
                    .unwrap_or_else(|e| fail("update", e)),
            );
        }
        let committed = Instant::now();
        let mut probe = Probe {
            at: committed,
            lag: Duration::ZERO,
            wait_ok: true,
            visible: true,
        };
        if let Some(stmt) = &wait_stmt {
            let row = match &write_token {
                Some(t) => reader.query_one(stmt, &[t]),
                None => reader.query_one(stmt, &[]),
            }
            .unwrap_or_else(|e| fail("pg_tviews_wait", e));
            probe.lag = committed.elapsed();
            probe.wait_ok = row.get::<_, Option<bool>>(0).unwrap_or(false);
            // Read your write on the session that waited, as an application would.
            probe.visible = !reader
                .query(&visible, &[&id, &token])
                .unwrap_or_else(|e| fail("read after wait", e))
                .is_empty();
        } else {
            loop {
                let rows = reader
                    .query(&visible, &[&id, &token])
                    .unwrap_or_else(|e| fail("poll", e));
                if !rows.is_empty() {
                    break;
                }
                if committed.elapsed() > timeout {
                    fail(
                        "timeout",
                        format!("pk_post = {id} not visible in tv_post after {timeout:?}"),
                    );
                }
                if !sleep.is_zero() {
                    std::thread::sleep(sleep);
                }
            }
            probe.lag = committed.elapsed();
        }
        if i >= args.warmup {
            probes.push(probe);
        }
    }

    let waits = args.mode != Mode::Poll;
    let mut out = std::fs::File::create(&args.out).unwrap_or_else(|e| fail("create output", e));
    let header = if waits {
        "t_ms,lag_us,wait_ok,visible"
    } else {
        "t_ms,lag_us"
    };
    writeln!(out, "{header}").unwrap_or_else(|e| fail("write output", e));
    let t0 = probes.first().map(|p| p.at);
    for p in &probes {
        let at = p.at.duration_since(t0.unwrap()).as_secs_f64() * 1000.0;
        let lag = p.lag.as_micros();
        if waits {
            writeln!(out, "{at:.3},{lag},{},{}", p.wait_ok as u8, p.visible as u8)
        } else {
            writeln!(out, "{at:.3},{lag}")
        }
        .unwrap_or_else(|e| fail("write output", e));
    }
    let mut sorted: Vec<u64> = probes.iter().map(|p| p.lag.as_micros() as u64).collect();
    sorted.sort_unstable();
    if sorted.is_empty() {
        fail("no probes", "nothing recorded (max-seconds too short?)");
    }
    let extra = if waits {
        format!(
            " waits_false={} violations={}",
            probes.iter().filter(|p| !p.wait_ok).count(),
            probes.iter().filter(|p| p.wait_ok && !p.visible).count()
        )
    } else {
        String::new()
    };
    eprintln!(
        "lag-probe {}: n={} p50={:.2}ms p95={:.2}ms p99={:.2}ms max={:.2}ms{extra}",
        args.tag,
        sorted.len(),
        percentile(&sorted, 50.0) as f64 / 1000.0,
        percentile(&sorted, 95.0) as f64 / 1000.0,
        percentile(&sorted, 99.0) as f64 / 1000.0,
        *sorted.last().unwrap() as f64 / 1000.0,
    );
}
