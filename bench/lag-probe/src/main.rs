//! Freshness-lag probe for the pg_tviews_bgw benchmark (bench/run.sh).
//!
//! Each probe: UPDATE one tb_post row, setting its title to a unique token (autocommit, so the
//! statement returns after COMMIT), take the time, then poll tv_post on a second connection until
//! the token is visible there, and record commit -> visible. Writes one `t_ms,lag_us` line per
//! probe (t_ms = when the probe committed, relative to the first recorded probe) and prints a
//! one-line summary on stderr.
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
}

fn usage() -> ! {
    eprintln!(
        "usage: pg_tviews_lag_probe --conn CONNINFO --out FILE [--probes N] [--warmup N] \
         [--max-seconds S] [--id-min N] [--id-max N] [--poll-sleep-us US] [--timeout-s S] \
         [--seed N] [--tag TEXT]"
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

    let mut rng = Rng(args.seed.max(1));
    let span = (args.id_max - args.id_min + 1) as u64;
    let pid = std::process::id();
    let timeout = Duration::from_secs(args.timeout_s);
    let sleep = Duration::from_micros(args.poll_sleep_us);
    let mut lags: Vec<(f64, u64)> = Vec::with_capacity(args.probes);
    let mut first_commit: Option<Instant> = None;
    let started = Instant::now();

    for i in 0..args.warmup + args.probes {
        if args.max_seconds > 0.0 && started.elapsed().as_secs_f64() >= args.max_seconds {
            break;
        }
        let id = args.id_min + (rng.next() % span) as i32;
        let token = format!("{}-{pid}-{i}", args.tag);
        let n = writer
            .execute(&update, &[&id, &token])
            .unwrap_or_else(|e| fail("update", e));
        if n != 1 {
            fail(
                "update",
                format!("pk_post = {id} matched {n} rows, expected 1"),
            );
        }
        // Autocommit: execute() returned after the commit, hence after the keys were published.
        let committed = Instant::now();
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
        let lag = committed.elapsed();
        if i >= args.warmup {
            let t0 = *first_commit.get_or_insert(committed);
            let at = committed.duration_since(t0).as_secs_f64() * 1000.0;
            lags.push((at, lag.as_micros() as u64));
        }
    }

    let mut out = std::fs::File::create(&args.out).unwrap_or_else(|e| fail("create output", e));
    writeln!(out, "t_ms,lag_us").unwrap_or_else(|e| fail("write output", e));
    for (at, lag) in &lags {
        writeln!(out, "{at:.3},{lag}").unwrap_or_else(|e| fail("write output", e));
    }
    let mut sorted: Vec<u64> = lags.iter().map(|&(_, l)| l).collect();
    sorted.sort_unstable();
    if sorted.is_empty() {
        fail("no probes", "nothing recorded (max-seconds too short?)");
    }
    eprintln!(
        "lag-probe {}: n={} p50={:.2}ms p95={:.2}ms p99={:.2}ms max={:.2}ms",
        args.tag,
        sorted.len(),
        percentile(&sorted, 50.0) as f64 / 1000.0,
        percentile(&sorted, 95.0) as f64 / 1000.0,
        percentile(&sorted, 99.0) as f64 / 1000.0,
        *sorted.last().unwrap() as f64 / 1000.0,
    );
}
