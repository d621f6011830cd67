#!/usr/bin/env bash
# Habits of this code base as checks (a tier of `make test`; fast, no build, no server):
#   1. every `unsafe` block, fn, impl or attribute has a `// SAFETY:` comment on its line or in
#      the comment/attribute lines just above it (its statement may start up to two lines
#      above); an `unsafe fn` may state its contract in a `/// # Safety` doc section instead;
#   2. nothing in src/queue/ (nor src/journal/rotation.rs, src/journal/mod.rs) uses SPI or raises (error!/ereport/pgrx log macros, panic!,
#      unwrap/expect, assert!, ...): it runs inside commit callbacks (ARCHITECTURE.md);
#      #[cfg(test)] items are exempt, and so are the entries of QUEUE_ALLOWED below;
#   3. every tests/pg_regress/expected/X.out or X_1.out has tests/pg_regress/sql/X.sql, and
#      every sql/X.sql has expected/X.out;
#   4. src/gucs.rs has no `pub static` (settings are read through typed accessors).
# Each failure is printed as file:line: message; the exit status is 1 if there is any.
# Usage: scripts/check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

exec python3 - <<'PY'
import os
import re
import sys

failures = []


def fail(path, line, message):
    failures.append(f"{path}:{line}: {message}")


def rust_files(root):
    for dirpath, _, names in os.walk(root):
        for name in sorted(names):
            if name.endswith(".rs"):
                yield os.path.join(dirpath, name)


def code_of(line):
    """The line without string/char literals and without its // comment (good enough for
    this code base: no raw strings containing `//` or `unsafe` on one line with code)."""
    line = re.sub(r'"(?:\\.|[^"\\])*"', '""', line)
    i = line.find("//")
    return line if i < 0 else line[:i]


def is_comment(line):
    return line.lstrip().startswith("//")


def is_attribute(line):
    return line.lstrip().startswith("#[") or line.lstrip().startswith("#![")


# 1. unsafe without SAFETY -------------------------------------------------------------------
UNSAFE = re.compile(r"\bunsafe\b")
for root in ("src", "e2e", "bench"):
    if not os.path.isdir(root):
        continue
    for path in rust_files(root):
        if "/target/" in path:
            continue
        lines = open(path, encoding="utf-8").read().split("\n")
        for n, line in enumerate(lines):
            if not UNSAFE.search(code_of(line)):
                continue
            if "SAFETY:" in line:
                continue
            markers = ("SAFETY:", "# Safety") if re.search(r"\bunsafe\b.*\bfn\b", code_of(line)) else ("SAFETY:",)
            ok = False
            code_lines_up = 0
            k = n - 1
            while k >= 0:
                above = lines[k]
                if is_comment(above):
                    if any(m in above for m in markers):
                        ok = True
                        break
                elif is_attribute(above):
                    pass
                elif above.strip() == "":
                    break
                else:
                    # The statement holding the `unsafe` may start a line or two above
                    # (`let x =` / a call's opening line) with the comment above that.
                    if "SAFETY:" in above:
                        ok = True
                        break
                    code_lines_up += 1
                    if code_lines_up > 2 or above.rstrip().endswith(("}", ";")):
                        break
                k -= 1
            if not ok:
                fail(path, n + 1, "`unsafe` without a `// SAFETY:` comment just above it")

# 2. SPI or raising in src/queue/ ----------------------------------------------------------------
QUEUE_BANNED = [
    (re.compile(r"\bSpi\b|\bspi::|\bSPI_\w+"), "SPI"),
    (re.compile(r"\b(error|ereport|elog|warning|notice|info|log|debug[1-5])!\s*\("), "ereport (pgrx log macro)"),
    (re.compile(r"\b(panic|unreachable|todo|unimplemented)!\s*\("), "panic"),
    (re.compile(r"\b(assert|assert_eq|assert_ne)!\s*\("), "assert! (panics in release builds)"),
    (re.compile(r"\.(unwrap|expect|unwrap_err|expect_err)\s*\("), "unwrap/expect (panics)"),
    (re.compile(r"\braise\b"), "raise"),
]
# (file, line regex, reason): deliberate exceptions, each with why it must stay.
QUEUE_ALLOWED = [
    ("src/queue/shmem.rs", re.compile(r"^\s*assert!\(i < self\.max_workers\);$"),
     "bounds check before raw-pointer slot/ring access: an out-of-range index is a bug, and "
     "continuing would read or write outside the segment (a panic is the lesser harm)"),
    ("src/queue/ring.rs", re.compile(r'^\s*assert!\(agree, "ring header and storage disagree"\);$'),
     "Ring::new: header capacity and storage length both come from one shmem Layout; if they "
     "disagree (a bug) every position would be computed wrong, so stop rather than corrupt"),
]


def test_item_lines(lines):
    """Line numbers (0-based) of items under #[cfg(test)]: skipped by the queue check."""
    skip = set()
    n = 0
    while n < len(lines):
        if re.match(r"^\s*#\[cfg\((test|any\(test\b)", lines[n]):
            depth = 0
            seen_brace = False
            k = n
            while k < len(lines):
                skip.add(k)
                code = code_of(lines[k])
                depth += code.count("{") - code.count("}")
                seen_brace = seen_brace or "{" in code
                if (seen_brace and depth <= 0) or (not seen_brace and code.rstrip().endswith(";")):
                    break
                k += 1
            n = k
        n += 1
    return skip


# The journal's rotation state lives in the shared segment too, and its format is decoded there.
NO_RAISE = list(rust_files("src/queue")) + ["src/journal/rotation.rs", "src/journal/mod.rs"]
for path in NO_RAISE:
    lines = open(path, encoding="utf-8").read().split("\n")
    skip = test_item_lines(lines)
    for n, line in enumerate(lines):
        if n in skip or is_comment(line):
            continue
        code = code_of(line)
        for pattern, what in QUEUE_BANNED:
            if not pattern.search(code):
                continue
            if any(path == f and a.search(line) for f, a, _ in QUEUE_ALLOWED):
                continue
            fail(path, n + 1, f"{what} in src/queue/ (shared-memory boundary: no SPI, nothing that raises)")

# 3. regress files in pairs -------------------------------------------------------------------
SQL, EXPECTED = "tests/pg_regress/sql", "tests/pg_regress/expected"
if os.path.isdir(SQL) and os.path.isdir(EXPECTED):
    sqls = {f[:-4] for f in os.listdir(SQL) if f.endswith(".sql")}
    outs = set()
    for f in sorted(os.listdir(EXPECTED)):
        m = re.fullmatch(r"(.+?)(_\d+)?\.out", f)
        if not m:
            fail(os.path.join(EXPECTED, f), 1, "not an expected file (X.out or X_1.out)")
            continue
        if m.group(2) is None:
            outs.add(m.group(1))
        if m.group(1) not in sqls:
            fail(os.path.join(EXPECTED, f), 1, f"expected output without its test {SQL}/{m.group(1)}.sql")
    for name in sorted(sqls - outs):
        fail(os.path.join(SQL, name + ".sql"), 1, f"test without its expected output {EXPECTED}/{name}.out")

# 4. settings are private -----------------------------------------------------------------------
GUCS = "src/gucs.rs"
for n, line in enumerate(open(GUCS, encoding="utf-8").read().split("\n")):
    if re.search(r"\bpub(\([^)]*\))?\s+static\b", code_of(line)):
        fail(GUCS, n + 1, "`pub static` setting: make it private and add a typed accessor")

for f in failures:
    print(f)
if failures:
    print(f"check: {len(failures)} problem(s)", file=sys.stderr)
    sys.exit(1)
print("check: ok (unsafe has SAFETY, src/queue/ neither uses SPI nor raises, regress files pair up, settings private)")
PY
