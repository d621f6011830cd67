#!/usr/bin/env python3
"""Turns the raw numbers of one bench/run.sh run into RESULTS_DIR/latest.md and PNG plots.

usage: report.py RAW_DIR RESULTS_DIR

Only the standard library is needed for the Markdown; plots need matplotlib and are skipped
(with a note in the report) when it is missing, so the smoke test never depends on it.
Percentiles are nearest-rank, medians are statistics.median.
"""

import csv
import math
import os
import statistics
import sys


def read_tsv_pairs(path):
    out = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.rstrip("\n")
                if "\t" in line:
                    k, v = line.split("\t", 1)
                    out[k] = v
    return out


def read_tsv_rows(path):
    """Rows (dicts by header) of a tab-separated file; none when it does not exist."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))


def read_csv(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def fnum(v, default=None):
    try:
        return float(v)
    except (TypeError, ValueError):
        return default


def pct(sorted_vals, p):
    if not sorted_vals:
        return float("nan")
    rank = max(1, math.ceil(p / 100.0 * len(sorted_vals)))
    return sorted_vals[min(rank, len(sorted_vals)) - 1]


def fmt(v, digits=1):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float) and abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def ratio(a, b):
    if a is None or b in (None, 0) or (isinstance(b, float) and math.isnan(b)):
        return None
    return a / b


def lags_ms(path):
    return sorted(fnum(r["lag_us"]) / 1000.0 for r in read_csv(path))


def sample_rows(path):
    """Rows of a queue sample file (epoch, pending, oldest pending commit epoch, converged)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [row for row in csv.reader(f)][1:]


def drain_curve(path):
    """(seconds since the first sample, pending) points and the drain's duration in seconds."""
    rows = sample_rows(path)
    if not rows:
        return [], None
    t0 = fnum(rows[0][0])
    pts = [(fnum(r[0]) - t0, int(float(r[1]))) for r in rows]
    return pts, pts[-1][0]


def writer_stats(path):
    """Variants in order of appearance and, per variant, medians and per-round ratios."""
    writer = read_tsv_rows(path)
    variants = []
    for r in writer:
        if r["variant"] not in variants:
            variants.append(r["variant"])
    by_round = {}
    for r in writer:
        by_round.setdefault(r["round"], {})[r["variant"]] = r
    stats = {}
    for v in variants:
        rows = [r for r in writer if r["variant"] == v]
        tps = [fnum(r["tps"]) for r in rows]
        lat = [fnum(r["latency_ms"]) for r in rows]
        paired = [
            fnum(rr[v]["tps"]) / fnum(rr["base"]["tps"])
            for rr in by_round.values()
            if v in rr and "base" in rr and fnum(rr["base"]["tps"])
        ]
        cpu = [fnum(r.get("cpu_us_per_tx")) for r in rows if fnum(r.get("cpu_us_per_tx"))]
        stats[v] = {
            "cpu": statistics.median(cpu) if cpu else None,
            "cpu_all": cpu,
            "tx": statistics.median([fnum(r.get("tx"), 0) for r in rows]),
            "overflowed": sum(int(fnum(r.get("overflowed_keys"), 0)) for r in rows),
            "tps": statistics.median(tps),
            "tps_all": tps,
            "lat": statistics.median(lat),
            "paired": statistics.median(paired) if paired else None,
            "backlog": statistics.median([fnum(r["backlog_keys"]) for r in rows]),
            "catchup": statistics.median([fnum(r["catchup_ms"]) for r in rows]),
            "stale": sum(int(fnum(r.get("stale_rows"), 0)) for r in rows),
        }
    return variants, stats


def cpu_pairs(path, num, den):
    """Per round, server CPU per write of variant num / that of variant den (same round)."""
    by_round = {}
    for r in read_tsv_rows(path):
        by_round.setdefault(r["round"], {})[r["variant"]] = r
    return [
        fnum(rr[num]["cpu_us_per_tx"]) / fnum(rr[den]["cpu_us_per_tx"])
        for rr in by_round.values()
        if num in rr and den in rr and fnum(rr[num].get("cpu_us_per_tx"))
        and fnum(rr[den].get("cpu_us_per_tx"))
    ]


def med(xs):
    return statistics.median(xs) if xs else None


def target(v, limit):
    """' (target ≤ limit: met / **missed**)' for a ratio."""
    if v is None:
        return f" (target ≤ {limit})"
    return f" (target ≤ {limit}: {'met' if v <= limit else '**missed**'})"


def wait_probes(path):
    """Latencies (ms, sorted), false waits and violations (wait true, read missed the write)."""
    rows = read_csv(path)
    lat = sorted(fnum(r["lag_us"]) / 1000.0 for r in rows)
    false_waits = sum(1 for r in rows if r.get("wait_ok") == "0")
    violations = sum(1 for r in rows if r.get("wait_ok") == "1" and r.get("visible") == "0")
    return lat, false_waits, violations


VARIANT_LABEL = {
    "base": "baseline (no trigger)",
    "tview": "pg_tviews_bgw async (TVIEW)",
    "paused": "pg_tviews_bgw async, worker paused during the round",
    "cap": "capture floor: no-op PL/pgSQL statement trigger",
    "syncpl": "synchronous PL/pgSQL refresh trigger",
    "sync": "pg_tviews_bgw mode = sync",
    "noscrub": "pg_tviews_bgw async, scrub off",
    "scrub": "pg_tviews_bgw async, scrub working (interval always behind, no cap)",
    "w1": "1 TVIEW over the table (worker paused)",
    "w8": "several TVIEWs over the same table (worker paused)",
}


def scrub_pairs(path):
    """Per round, tps with the scrub working / tps with it off (rounds alternate the two)."""
    by_round = {}
    for r in read_tsv_rows(path):
        by_round.setdefault(r["round"], {})[r["variant"]] = r
    return [
        fnum(rr["scrub"]["tps"]) / fnum(rr["noscrub"]["tps"])
        for rr in by_round.values()
        if "scrub" in rr and "noscrub" in rr and fnum(rr["noscrub"]["tps"])
    ]


def main():
    raw, results = sys.argv[1], sys.argv[2]
    os.makedirs(results, exist_ok=True)
    meta = read_tsv_pairs(os.path.join(raw, "meta.tsv"))
    m = read_tsv_pairs(os.path.join(raw, "metrics.tsv"))
    settings = []
    sp = os.path.join(raw, "settings.tsv")
    if os.path.exists(sp):
        with open(sp) as f:
            settings = [line.rstrip("\n").split("\t") for line in f if line.strip()]

    # ---- A: writer overhead (A2: the same without the journal) ------------------------------
    variants, wstats = writer_stats(os.path.join(raw, "writer.tsv"))
    none_variants, none_stats = writer_stats(os.path.join(raw, "writer_none.tsv"))
    scrub_variants, scrub_stats = writer_stats(os.path.join(raw, "writer_scrub.tsv"))
    scrub_paired = scrub_pairs(os.path.join(raw, "writer_scrub.tsv"))
    wpath = os.path.join(raw, "writer.tsv")
    cpu_vs_floor = {v: med(cpu_pairs(wpath, v, "syncpl")) for v in variants}
    cpu_vs_base = {v: med(cpu_pairs(wpath, v, "base")) for v in variants}
    w_variants, w_stats = writer_stats(os.path.join(raw, "writer_w.tsv"))
    w_cpu_pairs = cpu_pairs(os.path.join(raw, "writer_w.tsv"), "w8", "w1")
    w_legacy_pairs = cpu_pairs(os.path.join(raw, "writer_w.tsv"), "w8l", "w1")
    w_n = m.get("w.tviews.w8", meta.get("param.W_TVIEWS", "?"))
    VARIANT_LABEL["w8"] = f"{w_n} TVIEWs over the same table, one trigger family (worker paused)"
    VARIANT_LABEL["w8l"] = (f"{w_n} TVIEWs over the same table, per-TVIEW triggers as in 0.5.0 "
                            f"(worker paused)")
    ryw_token = wait_probes(os.path.join(raw, "ryw_token.csv"))
    ryw_wait = wait_probes(os.path.join(raw, "ryw_wait.csv"))

    # ---- B: lag --------------------------------------------------------------------------
    lag_idle = lags_ms(os.path.join(raw, "lag_idle.csv"))
    lag_load = lags_ms(os.path.join(raw, "lag_load.csv"))
    lag_paced = lags_ms(os.path.join(raw, "lag_paced.csv"))

    # ---- C: bulk (medians over the rounds) ------------------------------------------------
    bulk_rounds = read_tsv_rows(os.path.join(raw, "bulk.tsv"))

    def bulk_median(col):
        vals = [fnum(r[col]) for r in bulk_rounds if fnum(r.get(col)) is not None]
        return statistics.median(vals) if vals else None

    def bulk_ratio(col, base_col):
        vals = [fnum(r[col]) / fnum(r[base_col]) for r in bulk_rounds
                if fnum(r.get(col)) and fnum(r.get(base_col))]
        return statistics.median(vals) if vals else None

    base_write = bulk_median("base_ms")
    cap_write = bulk_median("cap_ms")
    tview_write = bulk_median("tview_ms")
    mv_ms = bulk_median("mv_ms")
    upsert_ms = bulk_median("upsert_ms")
    catchup_ms = bulk_median("catchup_ms")
    bulk_curve = []
    bulk = sample_rows(os.path.join(raw, "bulk_samples_0.csv"))
    if bulk:
        # The first round's curve, from the bulk transaction's commit (the oldest pending
        # commit time at the first sample).
        commit_at = fnum(bulk[0][2]) or fnum(bulk[0][0])
        bulk_curve = [(fnum(r[0]) - commit_at, int(float(r[1]))) for r in bulk]
        bulk_curve.insert(0, (0.0, bulk_curve[0][1]))

    # ---- D: drain per batch size ---------------------------------------------------------
    batch_sizes = [int(b) for b in meta.get("param.BATCH_SIZES", "").split()]
    drains = {}
    for bs in batch_sizes:
        pts, secs = drain_curve(os.path.join(raw, f"drain_{bs}.csv"))
        keys = fnum(m.get(f"drain.{bs}.keys"))
        lag = lags_ms(os.path.join(raw, f"lag_bs_{bs}.csv"))
        drains[bs] = {
            "pts": pts,
            "secs": secs,
            "keys": keys,
            "rate": keys / secs if keys and secs else None,
            "rows": fnum(m.get(f"drain.{bs}.rows")),
            "batches": fnum(m.get(f"drain.{bs}.batches")),
            "lag": lag,
            "load_tps": fnum(m.get(f"load.bs_{bs}.tps")),
            "backlog": fnum(m.get(f"load.bs_{bs}.backlog_keys")),
        }

    # ---- G: two workers ------------------------------------------------------------------
    g_pts, g_secs = drain_curve(os.path.join(raw, "g_drain.csv"))
    g_keys = fnum(m.get("g.drain.keys"))
    g_rate = g_keys / g_secs if g_keys and g_secs else None
    g_bulk = sample_rows(os.path.join(raw, "g_bulk_samples.csv"))
    g_catchup_ms = None
    if g_bulk:
        commit_at = fnum(g_bulk[0][2]) or fnum(m.get("g.bulk.tview_write_end"))
        g_catchup_ms = (fnum(g_bulk[-1][0]) - commit_at) * 1000.0

    # ---- E: overflow ---------------------------------------------------------------------
    ov_pts, ov_secs = drain_curve(os.path.join(raw, "overflow_samples.csv"))

    # ---- F: memory -----------------------------------------------------------------------
    shm = []
    sp = os.path.join(raw, "shmem.csv")
    if os.path.exists(sp):
        with open(sp) as f:
            shm = [row for row in csv.reader(f) if row]
    shm_total = sum(int(r[2]) for r in shm) if shm else None
    slots_keys = (fnum(m.get("max_workers"), 0) or 0) * (fnum(m.get("queue_size"), 0) or 0)
    per_key = shm_total / slots_keys if shm_total and slots_keys else None
    rss_peaks = {}
    for name in ["bulk"] + [f"drain_{bs}" for bs in batch_sizes] + ["overflow"]:
        rows = read_csv(os.path.join(raw, f"rss_{name}.csv"))
        if rows:
            rss_peaks[name] = (
                max(fnum(r["vmrss_kb"], 0) for r in rows),
                max(fnum(r["rssanon_kb"], 0) for r in rows),
            )

    # ---- plots ---------------------------------------------------------------------------
    plots, plot_note = make_plots(results, lag_idle, lag_paced, lag_load, drains, bulk_curve, ov_pts,
                                  wstats, variants, m)

    # ---- Markdown ------------------------------------------------------------------------
    L = []
    add = L.append
    add(f"# pg_tviews_bgw benchmark — {meta.get('label', '')} run")
    add("")
    add(f"- date: {meta.get('date', '?')}; commit `{meta.get('commit', '?')}`; "
        f"extension {meta.get('version', '?')} (.so built {meta.get('so_mtime', '?')})")
    add(f"- extension build measured: **{meta.get('build', '?')}**")
    add(f"- hardware: {meta.get('cpu', '?')}, nproc {meta.get('nproc', '?')}, "
        f"{meta.get('memory', '?')}; kernel {meta.get('kernel', '?')}; {meta.get('postgres', '?')}")
    params = ", ".join(f"{k[6:]}={v}" for k, v in meta.items() if k.startswith("param."))
    add(f"- parameters: {params}")
    add(f"- total run time: {m.get('total.seconds', '?')} s (workload setup {m.get('setup.seconds', '?')} s)")
    add(f"- load average (1/5/15 min) at start {meta.get('loadavg_start', '?')}, at end "
        f"{m.get('loadavg_end', '?')}")
    add("- shared machine: only ratios measured side by side in this run are meaningful; "
        "absolute numbers move from run to run.")
    add("")
    add("## Summary")
    add("")
    add("| Comparison | Result |")
    add("|---|---|")
    b = wstats.get("base", {}).get("tps")
    for v in variants:
        if v == "base":
            continue
        s = wstats[v]
        stale = (f"; **{s['stale']} rows left stale** by concurrent writers"
                 if v in ("sync", "syncpl") and s["stale"] else "")
        add(f"| writer tps, {VARIANT_LABEL.get(v, v)} / baseline | "
            f"{fmt(ratio(s['tps'], b), 3)} (medians {fmt(s['tps'])} / {fmt(b)} tps; "
            f"median of per-round ratios {fmt(s['paired'], 3)}{stale}) |")
    if m.get("feature.sync_mode") == "0":
        add("| writer tps, pg_tviews_bgw mode = sync / baseline | not available in this version "
            "(no pg_tviews_bgw.mode setting) |")
    # Server CPU per committed write (phase A rounds; W for the 1 vs n TVIEWs comparison).
    floor_cpu = wstats.get("syncpl", {}).get("cpu")
    for v, label, limit in (("tview", "async TVIEW, refresh included", 0.8),
                            ("sync", "pg_tviews_bgw mode = sync", 1.0),
                            ("paused", "async TVIEW, worker paused (writers' own cost)", None)):
        if v in wstats and floor_cpu:
            r = cpu_vs_floor.get(v)
            add(f"| server CPU per write, {label} / synchronous PL/pgSQL floor | {fmt(r, 3)}"
                f"{target(r, limit) if limit else ''} (medians {fmt(wstats[v]['cpu'], 1)} / "
                f"{fmt(floor_cpu, 1)} µs per write; ratio = median of per-round ratios) |")
    if "w8" in w_stats and "w1" in w_stats:
        r = med(w_cpu_pairs)
        add(f"| server CPU per write, {w_n} TVIEWs / 1 TVIEW over the same table, worker paused "
            f"(writers' own cost) | {fmt(r, 3)}{target(r, 1.15)} (medians {fmt(w_stats['w8']['cpu'], 1)} / "
            f"{fmt(w_stats['w1']['cpu'], 1)} µs per write) |")
        if "w8l" in w_stats:
            r = med(w_legacy_pairs)
            add(f"| the same with the per-TVIEW triggers of 0.5.0 (before one family per table) | "
                f"{fmt(r, 3)} (median {fmt(w_stats['w8l']['cpu'], 1)} µs per write) |")
    elif meta.get("param.W_ROUNDS") == "0":
        add("| server CPU per write, several TVIEWs / 1 TVIEW | not measured in this run (W_ROUNDS=0) |")
    lat, fw, viol = ryw_token
    if lat:
        p99 = pct(lat, 99)
        add(f"| read-your-writes under {meta.get('param.RYW_LOAD_CLIENTS', '?')} saturating writers: "
            f"commit → pg_tviews_wait(token) returned, p50 / p95 / p99 | {fmt(pct(lat, 50), 2)} / "
            f"{fmt(pct(lat, 95), 2)} / {fmt(p99, 2)} ms{target(p99, 20)} (n={len(lat)}; reads missing the "
            f"write: {'**' + str(viol) + '**' if viol else 0}; waits that returned false: {fw}) |")
    elif m.get("feature.write_token") == "0":
        add("| read-your-writes: commit → pg_tviews_wait(token) | not available in this version "
            "(no pg_tviews_write_token() / pg_tviews_wait(text) functions): skipped |")
    lat, fw, viol = ryw_wait
    if lat:
        add(f"| the same with plain pg_tviews_wait() (the whole backlog), p50 / p95 / p99 | "
            f"{fmt(pct(lat, 50), 2)} / {fmt(pct(lat, 95), 2)} / {fmt(pct(lat, 99), 2)} ms (n={len(lat)}; "
            f"reads missing the write: {viol}; waits that returned false: {fw}) |")
    add(f"| freshness lag idle, p50 / p95 / p99 | {fmt(pct(lag_idle, 50), 2)} / "
        f"{fmt(pct(lag_idle, 95), 2)} / {fmt(pct(lag_idle, 99), 2)} ms (n={len(lag_idle)}) |")
    add(f"| freshness lag under {meta.get('param.LAG_LOAD_CLIENTS', '?')} writers paced at "
        f"{meta.get('param.LAG_LOAD_RATE', '?')} tps, p50 / p95 / p99 | {fmt(pct(lag_paced, 50), 2)} / "
        f"{fmt(pct(lag_paced, 95), 2)} / {fmt(pct(lag_paced, 99), 2)} ms (n={len(lag_paced)}) |")
    add(f"| freshness lag under {meta.get('param.LAG_LOAD_CLIENTS', '?')} saturating writers "
        f"({fmt(fnum(m.get('load.lag.tps')))} tps, worker falls behind), p50 / p95 / p99 | "
        f"{fmt(pct(lag_load, 50), 2)} / {fmt(pct(lag_load, 95), 2)} / {fmt(pct(lag_load, 99), 2)} ms "
        f"(n={len(lag_load)}) |")
    add(f"| bulk UPDATE of every post: writer time TVIEW / baseline | {fmt(bulk_ratio('tview_ms', 'base_ms'), 2)} "
        f"(medians {fmt(tview_write)} / {fmt(base_write)} ms over {len(bulk_rounds)} rounds; capture floor / baseline "
        f"{fmt(bulk_ratio('cap_ms', 'base_ms'), 2)}) |")
    add(f"| bulk: TVIEW catch-up after commit (1 worker) | {fmt(catchup_ms)} ms (median) |")
    add(f"| bulk: REFRESH MATERIALIZED VIEW CONCURRENTLY (post + user) | {fmt(mv_ms)} ms "
        f"(TVIEW catch-up / MV refresh = {fmt(bulk_ratio('catchup_ms', 'mv_ms'), 2)}) |")
    add(f"| bulk: bare set-based upsert of all rows (post + user) | {fmt(upsert_ms)} ms "
        f"(TVIEW catch-up / upsert = {fmt(bulk_ratio('catchup_ms', 'upsert_ms'), 2)}) |")
    for bs in batch_sizes:
        d = drains[bs]
        add(f"| drain at batch_size {bs} | {fmt(d['rate'])} keys/s ({fmt(d['keys'], 0)} keys in "
            f"{fmt(d['secs'], 2)} s); paced lag p50/p95 {fmt(pct(d['lag'], 50), 2)} / "
            f"{fmt(pct(d['lag'], 95), 2)} ms |")
    if ov_secs is not None:
        add(f"| overflow → recovery (journal replay) of both TVIEWs | {fmt(ov_secs * 1000)} ms |")
    add(f"| shared memory per ring slot (one per queued key, plus one per committing transaction "
        f"and ring it uses) | {fmt(per_key, 1)} bytes "
        f"({fmt(shm_total / 1048576 if shm_total else None, 1)} MiB for "
        f"{m.get('max_workers', '?')} × {m.get('queue_size', '?')} keys) |")
    peak_anon = max((p[1] for p in rss_peaks.values()), default=None)
    peak_rss = max((p[0] for p in rss_peaks.values()), default=None)
    add(f"| worker memory: idle RssAnon → peak RssAnon with a backlog | "
        f"{fmt(fnum(m.get('worker.idle_rssanon_kb')) / 1024 if m.get('worker.idle_rssanon_kb') else None)} → "
        f"{fmt(peak_anon / 1024 if peak_anon else None)} MiB (VmRSS peak {fmt(peak_rss / 1024 if peak_rss else None)} MiB, "
        f"includes touched shared buffers) |")
    if none_stats:
        nb = none_stats.get("base", {}).get("tps")
        for v in ("tview", "paused"):
            if v in none_stats:
                add(f"| writer tps with durability = none, {VARIANT_LABEL.get(v, v)} / baseline | "
                    f"{fmt(ratio(none_stats[v]['tps'], nb), 3)} (medians {fmt(none_stats[v]['tps'])} / "
                    f"{fmt(nb)} tps; median of per-round ratios {fmt(none_stats[v]['paired'], 3)}) |")
        # The same comparison in CPU: what each write costs the server, which the tps ratio
        # follows only while the writers are CPU-bound (and the machine's other tenants allow).
        nc = none_stats.get("base", {}).get("cpu")
        r = med(cpu_pairs(os.path.join(raw, "writer_none.tsv"), "base", "paused"))
        if r is not None and "paused" in none_stats:
            add(f"| server CPU per write with durability = none, baseline / async worker paused "
                f"(the writer's own cost; target ≥ 0.92: {'met' if r >= 0.92 else '**missed**'}) | "
                f"{fmt(r, 3)} (medians {fmt(nc, 1)} / {fmt(none_stats['paused']['cpu'], 1)} µs per write; "
                f"ratio = median of per-round ratios) |")
        if m.get("restart.journal_replay_ms"):
            add(f"| restart back to durability = journal: until the worker is idle again | "
                f"{fmt(fnum(m.get('restart.journal_replay_ms')))} ms |")
    else:
        add("| writer tps with durability = none | not measured in this run |")
    if "scrub" in scrub_stats and "noscrub" in scrub_stats:
        add(f"| writer tps, scrub working / scrub off (scrub_interval = "
            f"{meta.get('param.SCRUB_INTERVAL', '?')}, no cap) | "
            f"{fmt(ratio(scrub_stats['scrub']['tps'], scrub_stats['noscrub']['tps']), 3)} (medians "
            f"{fmt(scrub_stats['scrub']['tps'])} / {fmt(scrub_stats['noscrub']['tps'])} tps; median of "
            f"per-round ratios {fmt(statistics.median(scrub_paired) if scrub_paired else None, 3)}) |")
    scrub_lag = {v: lags_ms(os.path.join(raw, f"lag_scrub_{v}.csv")) for v in ("noscrub", "scrub")}
    if scrub_lag["scrub"] and scrub_lag["noscrub"]:
        add(f"| freshness lag p50 / p95 / p99 under writers paced at {meta.get('param.LAG_LOAD_RATE', '?')} tps, "
            f"scrub working vs off | {fmt(pct(scrub_lag['scrub'], 50), 2)} / {fmt(pct(scrub_lag['scrub'], 95), 2)} / "
            f"{fmt(pct(scrub_lag['scrub'], 99), 2)} ms vs {fmt(pct(scrub_lag['noscrub'], 50), 2)} / "
            f"{fmt(pct(scrub_lag['noscrub'], 95), 2)} / {fmt(pct(scrub_lag['noscrub'], 99), 2)} ms; writer latency "
            f"{m.get('scrub.paced.scrub.latency_ms', '?')} vs {m.get('scrub.paced.noscrub.latency_ms', '?')} ms; "
            f"{m.get('scrub.paced.scrub.passes', '?')} scrub passes meanwhile |")
    if m.get("scrub.pass.rows"):
        add(f"| scrub speed, one pass without writers and without a cap | "
            f"{fmt(fnum(m.get('scrub.pass.rows_per_work_second')), 0)} rows per second of worker time "
            f"({m.get('scrub.pass.rows')} rows of {m.get('scrub.pass.tviews')} TVIEWs, "
            f"{m.get('scrub.pass.work_ms')} ms of work in {m.get('scrub.pass.seconds')} s) |")
    if not scrub_stats:
        add("| background scrub | not measured in this run |")
    one = drains.get(1000, {}).get("rate")
    if g_rate is not None:
        add(f"| drain with 2 workers (batch_size 1000) | {fmt(g_rate)} keys/s ({fmt(g_keys, 0)} keys in "
            f"{fmt(g_secs, 2)} s); 1 worker at batch_size 1000: {fmt(one)} keys/s "
            f"(2 / 1 = {fmt(ratio(g_rate, one), 2)}) |")
    if g_catchup_ms is not None:
        add(f"| bulk: TVIEW catch-up after commit with 2 workers | {fmt(g_catchup_ms)} ms "
            f"(1 worker: {fmt(catchup_ms)} ms; / upsert = {fmt(ratio(g_catchup_ms, upsert_ms), 2)}; "
            f"/ MV refresh = {fmt(ratio(g_catchup_ms, mv_ms), 2)}) |")
    if g_rate is None and g_catchup_ms is None:
        add("| workers_per_database = 2 | not measured in this run |")
    add("")

    add("## A. Writer overhead")
    add("")
    add(f"pgbench, `UPDATE <copy>.tb_post SET votes = votes + 1 WHERE pk_post = :id` (random id), "
        f"{meta.get('param.CLIENTS', '?')} clients, -M prepared, {meta.get('param.ROUND_S', '?')} s per round, "
        f"{meta.get('param.ROUNDS', '?')} round(s) per variant, variants alternated and rotated each round.")
    add("")
    add("| Variant | median tps | tps / baseline | median per-round ratio | median latency ms | rounds (tps) |")
    add("|---|---|---|---|---|---|")
    for v in variants:
        s = wstats[v]
        add(f"| {VARIANT_LABEL.get(v, v)} | {fmt(s['tps'])} | {fmt(ratio(s['tps'], b), 3)} | "
            f"{fmt(s['paired'], 3)} | {fmt(s['lat'], 3)} | {', '.join(fmt(t) for t in s['tps_all'])} |")
    if any(wstats[v]["cpu"] for v in variants):
        add("")
        add(f"Server CPU per committed write, the same rounds: user+sys time of every server process "
            f"(`/proc/<postmaster>/stat` utime+stime+cutime+cstime, the cutime/cstime covering the "
            f"reaped backends of closed connections, pgbench's included, plus utime+stime of every "
            f"live child: worker, launcher, checkpointer, walwriter, autovacuum) from just before "
            f"pgbench starts to after the round's writes are applied (`pg_tviews_wait`, its own "
            f"connection included; every client backend gone before each snapshot), divided by the "
            f"transactions pgbench committed. The async variant thus includes the worker's refresh of "
            f"the round's backlog; the paused variant is measured before the worker is re-enabled "
            f"(`pg_tviews_bgw.enabled = off` + reload during the round): the writers' own cost. "
            f"Clock ticks of 1/{meta.get('clk_tck', '100')} s per process.")
        add("")
        add("| Variant | CPU µs per write (median) | / PL/pgSQL floor (median per-round ratio) | / baseline (median per-round ratio) | rounds (µs per write) |")
        add("|---|---|---|---|---|")
        for v in variants:
            s = wstats[v]
            add(f"| {VARIANT_LABEL.get(v, v)} | {fmt(s['cpu'], 1)} | {fmt(cpu_vs_floor.get(v), 3)} | "
                f"{fmt(cpu_vs_base.get(v), 3)} | {', '.join(fmt(c, 1) for c in s['cpu_all'])} |")
    if "tview" in wstats:
        add("")
        add(f"Async variant: the worker shares the {meta.get('nproc', '?')} cores with the writers. "
            f"Median backlog left at the end of a round: {fmt(wstats['tview']['backlog'], 0)} keys, "
            f"drained {fmt(wstats['tview']['catchup'], 0)} ms later (median).")
    if "paused" in wstats:
        add(f"Paused variant (the writers' own cost: capture triggers + publish at COMMIT, no worker "
            f"running): median backlog {fmt(wstats['paused']['backlog'], 0)} keys, drained "
            f"{fmt(wstats['paused']['catchup'], 0)} ms after the worker was re-enabled "
            f"(keys overflowed during phase A: {m.get('writer.overflowed_keys', '?')}; non-zero means "
            f"a paused round did not fit the ring and was caught up by a recovery).")
    for v in ("sync", "syncpl"):
        if v in wstats:
            add(f"Rows of `tv_post`/`tv_user` left stale after the {VARIANT_LABEL[v]} rounds (summed "
                f"over rounds, repaired after each): **{wstats[v]['stale']}**. Under READ COMMITTED "
                "two writers changing posts of the same user each recompute that user's row from a "
                "snapshot that misses the other's change, and the later upsert wins.")
    add("")

    if w_stats:
        add(f"### W. Writers pay once per table: 1 vs {w_n} TVIEWs over the same table")
        add("")
        add(f"More identical copies of `tb_user`/`tb_post`: one with a single TVIEW (`tv_post`'s "
            f"query), one with {w_n} TVIEWs (the same query under other names, each keyed by `pk_post` "
            f"under its own name) sharing each table's one trigger family, and one with the same "
            f"{w_n} TVIEWs whose capture is rewritten into the per-TVIEW triggers of 0.5.0 (the "
            f"layout before), created for this phase and dropped after it. The same single-row "
            f"UPDATE, {meta.get('param.CLIENTS', '?')} clients, a fixed {meta.get('param.W_TX', '?')} "
            f"transactions per client per round (so a paused round's keys fit the ring), the two "
            f"alternated and rotated each round, the worker paused (`pg_tviews_bgw.enabled = off`) "
            f"during the round and server CPU taken before it is re-enabled: what the writers "
            f"themselves pay to capture and publish. Keys overflowed in these rounds: "
            f"{sum(st['overflowed'] for st in w_stats.values())} (non-zero: a round did not fit the "
            f"ring and the figure is not the normal path).")
        add("")
        add("| Variant | CPU µs per write (median) | / 1 TVIEW (median per-round ratio) | median tps | median latency ms | keys queued per round (median) | rounds (µs per write) |")
        add("|---|---|---|---|---|---|---|")
        for v in w_variants:
            st = w_stats[v]
            r = {"w8": med(w_cpu_pairs), "w8l": med(w_legacy_pairs), "w1": 1.0}.get(v)
            add(f"| {VARIANT_LABEL.get(v, v)} | {fmt(st['cpu'], 1)} | {fmt(r, 3)} | {fmt(st['tps'])} | "
                f"{fmt(st['lat'], 3)} | {fmt(st['backlog'], 0)} | {', '.join(fmt(c, 1) for c in st['cpu_all'])} |")
        add("")

    if none_stats:
        add("### A2. The same without the journal (`durability = none`)")
        add("")
        add("The cluster restarted with `pg_tviews_bgw.durability = none`; baseline and async variants "
            "alternated again in that configuration (ratios are against that phase's own baseline).")
        add("")
        add("| Variant | median tps | tps / baseline | median per-round ratio | median latency ms | rounds (tps) |")
        add("|---|---|---|---|---|---|")
        nb = none_stats.get("base", {}).get("tps")
        for v in none_variants:
            st = none_stats[v]
            add(f"| {VARIANT_LABEL.get(v, v)} | {fmt(st['tps'])} | {fmt(ratio(st['tps'], nb), 3)} | "
                f"{fmt(st['paired'], 3)} | {fmt(st['lat'], 3)} | {', '.join(fmt(t) for t in st['tps_all'])} |")
        add("")

    if scrub_stats:
        add("### S. Background scrub (anti-entropy)")
        add("")
        add(f"The async TVIEW variant with the scrub off (`scrub_interval = 0`) and with it working "
            f"through the round (`scrub_interval = {meta.get('param.SCRUB_INTERVAL', '?')}`, always behind, "
            f"`scrub_rows_per_second = 0`: no cap, the worst case; the default is 1 day capped at "
            f"1000 rows/s), alternated round by round. The scrub runs only when the worker has "
            f"nothing to drain. Scrub passes completed during these rounds: "
            f"{m.get('scrub.passes_during_rounds', '?')}; drift repaired in the whole run: "
            f"{m.get('scrub.total_drift', '?')} rows (must be 0: nothing here bypasses capture).")
        add("")
        add("| Variant | median tps | tps / scrub off | median latency ms | backlog keys | rounds (tps) |")
        add("|---|---|---|---|---|---|")
        nb = scrub_stats.get("noscrub", {}).get("tps")
        for v in scrub_variants:
            st = scrub_stats[v]
            add(f"| {VARIANT_LABEL.get(v, v)} | {fmt(st['tps'])} | {fmt(ratio(st['tps'], nb), 3)} | "
                f"{fmt(st['lat'], 3)} | {fmt(st['backlog'], 0)} | {', '.join(fmt(t) for t in st['tps_all'])} |")
        if scrub_lag["scrub"] and scrub_lag["noscrub"]:
            add("")
            add(f"Saturating writers leave the worker no idle time (see the backlog), so the scrub hardly "
                f"runs in those rounds: by design it never competes with queued keys. With writers paced at "
                f"{meta.get('param.LAG_LOAD_RATE', '?')} tps the worker is idle part of the time and the scrub "
                f"takes all of it (`scrub_interval = {meta.get('param.SCRUB_INTERVAL', '?')}`, always behind):")
            add("")
            add("| Paced writers | lag p50 ms | lag p95 ms | lag p99 ms | writer latency ms | scrub passes |")
            add("|---|---|---|---|---|---|")
            for v in ("noscrub", "scrub"):
                add(f"| {VARIANT_LABEL.get(v, v)} | {fmt(pct(scrub_lag[v], 50), 2)} | {fmt(pct(scrub_lag[v], 95), 2)} | "
                    f"{fmt(pct(scrub_lag[v], 99), 2)} | {m.get(f'scrub.paced.{v}.latency_ms', '?')} | "
                    f"{m.get(f'scrub.paced.{v}.passes', '?')} |")
        if m.get("scrub.pass.rows"):
            add("")
            add(f"Scrub speed without writers and without a cap: one pass over {m.get('scrub.pass.rows')} rows of "
                f"{m.get('scrub.pass.tviews')} TVIEWs took {m.get('scrub.pass.seconds')} s, "
                f"{m.get('scrub.pass.work_ms')} ms of it in compare/confirm transactions: "
                f"{m.get('scrub.pass.rows_per_work_second')} rows per second of worker time.")
        add("")

    if g_rate is not None or g_catchup_ms is not None:
        add("## G. Two workers per database")
        add("")
        add(f"The cluster restarted with `pg_tviews_bgw.workers_per_database = 2` "
            f"({m.get('g.workers', '?')} workers running): keys are partitioned by (TVIEW, key).")
        add("")
        add("| Measurement | 1 worker | 2 workers |")
        add("|---|---|---|")
        add(f"| drain of {fmt(g_keys, 0)} queued keys, batch_size 1000 (keys/s) | {fmt(one)} | {fmt(g_rate)} |")
        add(f"| bulk catch-up of every post (ms after commit) | {fmt(catchup_ms)} | {fmt(g_catchup_ms)} |")
        add(f"| bulk writer time (ms) | {fmt(tview_write)} | {fmt(fnum(m.get('g.bulk.tview_write_ms')))} |")
        add("")

    add("## B. Freshness lag (commit → visible in tv_post)")
    add("")
    add("| Condition | n | p50 ms | p95 ms | p99 ms | max ms |")
    add("|---|---|---|---|---|---|")
    clients = meta.get('param.LAG_LOAD_CLIENTS', '?')
    for name, xs in [("idle", lag_idle),
                     (f"{clients} writers paced at {meta.get('param.LAG_LOAD_RATE', '?')} tps "
                      f"(achieved {fmt(fnum(m.get('load.paced.tps')))}), backlog at end "
                      f"{m.get('load.paced.backlog_keys', '?')} keys", lag_paced),
                     (f"{clients} saturating writers, {fmt(fnum(m.get('load.lag.tps')))} tps, "
                      f"backlog at end {m.get('load.lag.backlog_keys', '?')} keys", lag_load)]:
        add(f"| {name} | {len(xs)} | {fmt(pct(xs, 50), 2)} | {fmt(pct(xs, 95), 2)} | "
            f"{fmt(pct(xs, 99), 2)} | {fmt(xs[-1] if xs else None, 2)} |")
    add("")
    add("Probes touch posts 1..LAG_PROBE_IDS, the load writers the other posts. Under saturating "
        "writers the single worker falls behind, the backlog grows for as long as they run and the "
        "few probes that complete each wait for it: that row measures the backlog, not a steady state.")
    add("")

    add("## R. Read-your-writes (write token)")
    add("")
    tl, tfw, tviol = ryw_token
    wl, wfw, wviol = ryw_wait
    add(f"{meta.get('param.RYW_LOAD_CLIENTS', '?')} pgbench writers as fast as they go on the posts the "
        f"probe never touches (the worker falls behind, the backlog grows), {meta.get('param.RYW_LOAD_S', '?')} s "
        f"per mode. Token: the probe runs `UPDATE tb_post SET title = <unique> WHERE pk_post = $1; "
        f"SELECT pg_tviews_write_token(); COMMIT` on one connection, then `SELECT pg_tviews_wait(token, "
        f"interval '{meta.get('param.RYW_WAIT_TIMEOUT_S', '?')} s')` on another and records commit → wait "
        f"returned, then reads `tv_post` for that row on the waiting connection: a read that does not show "
        f"the write after the wait returned true is a violation. Plain: an autocommit UPDATE, then "
        f"`pg_tviews_wait(interval)` (no token: everything committed before it, i.e. the whole backlog).")
    add("")
    add("| Wait | n | p50 ms | p95 ms | p99 ms | max ms | reads missing the write | waits returning false | load tps | backlog at end (keys) |")
    add("|---|---|---|---|---|---|---|---|---|---|")
    for name, mode, (xs, fw, viol) in (("pg_tviews_wait(token)", "token", ryw_token),
                                       ("pg_tviews_wait() (whole backlog)", "wait", ryw_wait)):
        if not xs:
            why = ("skipped: no pg_tviews_write_token() / pg_tviews_wait(text) in this version"
                   if mode == "token" and m.get("feature.write_token") == "0" else "not measured in this run")
            add(f"| {name} | {why} | | | | | | | | |")
            continue
        add(f"| {name} | {len(xs)} | {fmt(pct(xs, 50), 2)} | {fmt(pct(xs, 95), 2)} | {fmt(pct(xs, 99), 2)} | "
            f"{fmt(xs[-1], 2)} | {'**' + str(viol) + '**' if viol else 0} | {fw} | "
            f"{fmt(fnum(m.get(f'load.ryw_{mode}.tps')))} | {m.get(f'load.ryw_{mode}.backlog_keys', '?')} |")
    ov = [m.get(f"ryw.{mode}.overflowed_keys") for mode in ("token", "wait")]
    if any(o not in (None, "0") for o in ov):
        add("")
        add(f"Keys overflowed during these loads (token / plain): {ov[0] or '–'} / {ov[1] or '–'}: the ring "
            f"filled up and the worker recovered, so those waits include a recovery.")
    add("")

    add("## C. Bulk catch-up (one UPDATE of every post)")
    add("")
    add("Each round (tables vacuumed first): the same UPDATE on the baseline copy and on the capture-floor "
        "copy, REFRESH MATERIALIZED VIEW CONCURRENTLY of both views and the bare set-based upsert of both "
        "copies, then the UPDATE on the TVIEW tables and the time from its commit until both TVIEWs "
        "converged. All ms.")
    add("")
    add("| Round | baseline UPDATE | capture floor UPDATE | MV refresh (post + user) | set-based upsert (post + user) | TVIEW UPDATE | TVIEW catch-up | rows written by the worker |")
    add("|---|---|---|---|---|---|---|---|")
    for r in bulk_rounds:
        add(f"| {int(fnum(r['round'], 0)) + 1} | {fmt(fnum(r['base_ms']))} | {fmt(fnum(r['cap_ms']))} | "
            f"{fmt(fnum(r['mv_ms']))} | {fmt(fnum(r['upsert_ms']))} | {fmt(fnum(r['tview_ms']))} | "
            f"{fmt(fnum(r['catchup_ms']))} | {r['worker_rows']} |")
    add(f"| median | {fmt(base_write)} | {fmt(cap_write)} | {fmt(mv_ms)} | {fmt(upsert_ms)} | "
        f"{fmt(tview_write)} | {fmt(catchup_ms)} | |")
    add("")

    add("## D. Drain throughput and lag versus batch_size")
    add("")
    add(f"{meta.get('param.DRAIN_KEYS', '?')} posts updated in one statement with the worker disabled "
        "(keys for tv_post and tv_user queued), then batch_size set and the worker enabled with one "
        "reload; time from the reload to the queue being empty. Then the lag probe under writers paced at "
        f"{meta.get('param.LAG_LOAD_RATE', '?')} tps at that batch size.")
    add("")
    add("| batch_size | keys | s | keys/s | rows written | batches | lag p50 ms | lag p95 ms | lag p99 ms | load tps | backlog after load |")
    add("|---|---|---|---|---|---|---|---|---|---|---|")
    for bs in batch_sizes:
        d = drains[bs]
        add(f"| {bs} | {fmt(d['keys'], 0)} | {fmt(d['secs'], 2)} | {fmt(d['rate'])} | {fmt(d['rows'], 0)} | "
            f"{fmt(d['batches'], 0)} | {fmt(pct(d['lag'], 50), 2)} | {fmt(pct(d['lag'], 95), 2)} | "
            f"{fmt(pct(d['lag'], 99), 2)} | {fmt(d['load_tps'])} | {fmt(d['backlog'], 0)} |")
    add("")

    add("## E. Overflow → recovery")
    add("")
    if ov_secs is None:
        add("Not run (OVERFLOW=0).")
    else:
        add(f"{m.get('overflow.statements', '?')} bulk UPDATEs of every post with the worker disabled; "
            f"the last one did not fit the ring ({m.get('overflow.overflowed_keys', '?')} keys overflowed, "
            f"{m.get('overflow.pending_before', '?')} still queued). Worker enabled: recovery "
            f"({m.get('overflow.full_refreshes', '?')} counted; a journal replay with durability = "
            f"journal, a full reconcile without) done in {fmt(ov_secs * 1000)} ms "
            f"(compare the set-based upsert in C: {fmt(upsert_ms)} ms).")
    add("")

    add("## F. Memory")
    add("")
    add("| Shared memory allocation | size | allocated_size |")
    add("|---|---|---|")
    for r in shm:
        add(f"| {r[0]} | {int(r[1]):,} | {int(r[2]):,} |")
    add(f"| per ring slot (allocated / (max_workers × queue_size)); a slot holds one key, or the commit "
        f"marker of a transaction in that ring | | {fmt(per_key, 2)} bytes |")
    add("")
    add("| Worker memory (kB) | VmRSS | RssAnon |")
    add("|---|---|---|")
    add(f"| idle after setup | {m.get('worker.idle_rss_kb', '?')} | {m.get('worker.idle_rssanon_kb', '?')} |")
    for name, (rss, anon) in rss_peaks.items():
        add(f"| peak while draining: {name} | {fmt(rss, 0)} | {fmt(anon, 0)} |")
    add(f"| VmHWM at the end (lifetime peak RSS) | {m.get('worker.vmhwm_kb', '?')} | |")
    add("")

    add("## Settings")
    add("")
    add("| name | setting | unit |")
    add("|---|---|---|")
    for row in settings:
        row = (row + ["", "", ""])[:3]
        add(f"| {row[0]} | {row[1]} | {row[2]} |")
    add("")
    add("## Plots")
    add("")
    if plots:
        for title, fname in plots:
            add(f"- {title}: ![{title}]({fname})")
    else:
        add(f"No plots: {plot_note}")
    add("")

    with open(os.path.join(results, "latest.md"), "w") as f:
        f.write("\n".join(L))
    print("\n".join(L[: L.index("## A. Writer overhead")]))


def make_plots(results, lag_idle, lag_paced, lag_load, drains, bulk_curve, ov_pts, wstats, variants, m):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "matplotlib is not installed (pip install matplotlib)"
    plots = []

    def cdf(ax, xs, label):
        if xs:
            ax.step([xs[0]] + xs, [0.0] + [(i + 1) / len(xs) for i in range(len(xs))],
                    where="post", label=label)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    cdf(ax, lag_idle, f"idle (n={len(lag_idle)})")
    cdf(ax, lag_paced, f"paced writers (n={len(lag_paced)})")
    cdf(ax, lag_load, f"saturating writers (n={len(lag_load)})")
    for bs, d in drains.items():
        cdf(ax, d["lag"], f"paced writers, batch_size {bs} (n={len(d['lag'])})")
    ax.set_xscale("log")
    ax.set_xlabel("commit → visible in tv_post (ms, log scale)")
    ax.set_ylabel("fraction of probes")
    ax.set_title("Freshness lag CDF")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(results, "lag_cdf.png"), dpi=110)
    plt.close(fig)
    plots.append(("Freshness lag CDF, idle and under load", "lag_cdf.png"))

    bss = [bs for bs in drains if drains[bs]["rate"]]
    if bss:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        a1.plot(bss, [drains[b]["rate"] for b in bss], "o-")
        a1.set_xscale("log")
        a1.set_xlabel("pg_tviews_bgw.batch_size")
        a1.set_ylabel("keys drained per second")
        a1.set_title("Drain throughput")
        a1.grid(True, which="both", alpha=0.3)
        for p, style in [(50, "o-"), (95, "s--"), (99, "^:")]:
            a2.plot(bss, [pct(drains[b]["lag"], p) for b in bss], style, label=f"p{p}")
        a2.set_xscale("log")
        a2.set_yscale("log")
        a2.set_xlabel("pg_tviews_bgw.batch_size")
        a2.set_ylabel("lag under paced writers (ms)")
        a2.set_title("Freshness lag under paced writers")
        a2.grid(True, which="both", alpha=0.3)
        a2.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(results, "batch_size.png"), dpi=110)
        plt.close(fig)
        plots.append(("Throughput and lag versus batch_size", "batch_size.png"))

    if bulk_curve or ov_pts:
        # Two panels: the overflow backlog is ten times the others and would flatten them.
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.5))
        if bulk_curve:
            a1.plot([p[0] for p in bulk_curve], [p[1] for p in bulk_curve],
                    label="bulk UPDATE of every post (s since commit)")
        for bs, d in drains.items():
            if d["pts"]:
                a1.plot([p[0] for p in d["pts"]], [p[1] for p in d["pts"]], "--",
                        label=f"drain, batch_size {bs} (s since enable)")
        a1.set_title("Catch-up: pending keys over time")
        if ov_pts:
            a2.plot([p[0] for p in ov_pts], [p[1] for p in ov_pts], color="tab:red",
                    label="after overflow: recovery (s since enable)")
        a2.set_title("Overflow: queued keys until the recovery is done")
        for ax in (a1, a2):
            ax.set_xlabel("seconds")
            ax.set_ylabel("pending keys")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(results, "catchup.png"), dpi=110)
        plt.close(fig)
        plots.append(("Bulk catch-up, drains and overflow: pending keys over time", "catchup.png"))

    if wstats:
        fig, ax = plt.subplots(figsize=(8, 4))
        labels = [VARIANT_LABEL.get(v, v).replace(": ", ":\n") for v in variants]
        ax.bar(range(len(variants)), [wstats[v]["tps"] for v in variants], alpha=0.6)
        for i, v in enumerate(variants):
            ax.plot([i] * len(wstats[v]["tps_all"]), wstats[v]["tps_all"], "k.", alpha=0.7)
        ax.set_xticks(range(len(variants)))
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_ylabel("tps (bar: median, dots: rounds)")
        ax.set_title("Writer throughput, single-row UPDATE")
        ax.grid(True, axis="y", alpha=0.3)
        fig.tight_layout()
        fig.savefig(os.path.join(results, "writer.png"), dpi=110)
        plt.close(fig)
        plots.append(("Writer throughput per variant", "writer.png"))
    return plots, ""


if __name__ == "__main__":
    main()
