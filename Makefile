# Developer entry points for pg_tviews_bgw. Everything works from a fresh clone as root on
# Debian 12: servers run as the postgres user (see scripts/cluster.sh).
# PG selects the PostgreSQL major version (15, 16 or 18; scripts/deps.sh installs them):
# `make PG=18 test`. PGBIN is exported, so scripts/*.sh, bench/ and the e2e harness use the same
# server.
PG ?= 15
PGBIN := $(shell scripts/pg-bindir.sh $(PG))
ifeq ($(PGBIN),)
$(error unsupported PG=$(PG): use 15, 16 or 18)
endif
export PG PGBIN
# Derived from PG, not taken from the environment: a stray PG_CONFIG must not send a `make PG=16`
# install elsewhere (make PG_CONFIG=... on the command line still overrides it).
PG_CONFIG := $(PGBIN)/pg_config
# The crate's default feature is pg15; other versions select theirs (as cargo pgrx does itself).
PG_FEATURES := --no-default-features --features pg$(PG)
# One data directory per version: a cluster's files belong to one major version.
PGRX_TEST_DATA := $(CURDIR)/target/pgrx-test-data-pg$(PG)
export DEMO_DIR := $(CURDIR)/.demo/pg$(PG)

# One visible line per tier of `make test`.
banner = @printf '\n==== %s ====\n' "$(1)"

.PHONY: deps install install-release install-released demo demo-stop test test-all test-compat upgrade-test fmt check clippy unit regress e2e bench-smoke

deps:
	@scripts/deps.sh

# Quiet unless it fails: the full cargo/pgrx output is kept in target/install.log.
install: deps
	@mkdir -p target
	@echo "install: cargo pgrx install --pg-config $(PG_CONFIG)"
	@cargo pgrx install --pg-config $(PG_CONFIG) >target/install.log 2>&1 \
		|| { cat target/install.log; exit 1; }
	@$(MAKE) --no-print-directory install-released

# Install scripts of earlier releases (cargo pgrx installs only the current one and the
# upgrade scripts), so CREATE EXTENSION ... VERSION '<old>' works and upgrades can be tested.
install-released:
	@install -m 644 sql/released/*.sql "$$($(PG_CONFIG) --sharedir)/extension/"

demo: install
	@scripts/demo.sh

demo-stop:
	@scripts/cluster.sh stop $(DEMO_DIR)
	@echo "demo cluster stopped (data kept in $(DEMO_DIR); rm -rf it to start over)"

fmt:
	cargo fmt --check

# The code base's habits as checks (no build, under a second): SAFETY comments on every unsafe,
# no SPI or raising in src/queue/, regress tests paired with expected files, private settings.
check:
	@scripts/check.sh

clippy: deps
	cargo clippy $(PG_FEATURES) --all-targets -- -D warnings

# #[pg_test]s in a pgrx-managed cluster plus the plain #[test]s. pgrx starts postgres as the
# --runas user, which must own the data directory.
unit: deps
	@scripts/cluster.sh prepare $(PGRX_TEST_DATA)
	cargo pgrx test pg$(PG) --runas postgres --pgdata $(PGRX_TEST_DATA)

regress: install
	@scripts/regress.sh

e2e: install
	cd e2e && cargo test --release -- --test-threads=2

# Full benchmark (< 15 min on 2 cores): its own cluster, every comparison in one run, results in
# bench/results/latest.md + PNGs. Sizes are environment variables, see bench/run.sh.
.PHONY: bench
bench: install-release
	@python3 -c 'import matplotlib' 2>/dev/null || pip install --quiet matplotlib
	@bash bench/run.sh

# Benchmarks measure the optimized build (tests use the faster-to-compile debug build).
install-release: deps
	@mkdir -p target
	@echo "install: cargo pgrx install --release --pg-config $(PG_CONFIG)"
	@cargo pgrx install --release --pg-config $(PG_CONFIG) >target/install.log 2>&1 \
		|| { cat target/install.log; exit 1; }
	@$(MAKE) --no-print-directory install-released

# The same driver with tiny sizes (under a minute); fails only if the harness breaks, never on
# a timing. Uses the installed extension (make test reinstalls it first). Output: target/bench-smoke/.
bench-smoke:
	@bash bench/smoke.sh

# Tiers in order, stopping at the first failure. `cargo pgrx test` installs a pg_test build
# over the system one, hence the reinstall before the tiers that use the installed extension.
test: deps
	$(call banner,PostgreSQL $(PG): $(PGBIN))
	$(call banner,1/8 format: cargo fmt --check)
	@$(MAKE) --no-print-directory fmt
	$(call banner,2/8 checks: scripts/check.sh)
	@$(MAKE) --no-print-directory check
	$(call banner,3/8 lint: cargo clippy $(PG_FEATURES) --all-targets -D warnings)
	@$(MAKE) --no-print-directory clippy
	$(call banner,4/8 unit: cargo pgrx test pg$(PG) (#[pg_test] + #[test]))
	@$(MAKE) --no-print-directory unit
	$(call banner,5/8 reinstall the normal build)
	@$(MAKE) --no-print-directory install
	$(call banner,6/8 regression: scripts/regress.sh)
	@scripts/regress.sh
	$(call banner,7/8 end-to-end: e2e crate)
	@cd e2e && cargo test --release -- --test-threads=2
	$(call banner,8/8 bench smoke)
	@$(MAKE) --no-print-directory bench-smoke
	@printf '\n==== all tiers passed (PostgreSQL $(PG)) ====\n'

# The tiers that run the server, for the versions CI does not test in full: install, regression,
# end-to-end (`make PG=16 test` runs all eight).
test-compat: deps
	$(call banner,PostgreSQL $(PG): $(PGBIN))
	$(call banner,1/3 install: cargo pgrx install --pg-config $(PG_CONFIG))
	@$(MAKE) --no-print-directory install
	$(call banner,2/3 regression: scripts/regress.sh)
	@scripts/regress.sh
	$(call banner,3/3 end-to-end: e2e crate)
	@cd e2e && cargo test --release -- --test-threads=2
	@printf '\n==== regression and end-to-end passed (PostgreSQL $(PG)) ====\n'

# CI (.ci/run), stopping at the first failure: every tier on 15, the server tiers on 16 and 18,
# then pg_upgrade 16 -> 18 (15 -> 16 cannot work with these builds, see README). The full suite on all three would not fit CI's 30 minutes on
# 2 cores from a fresh clone (README, Tests). PG on the command line of a sub-make overrides
# the one inherited from this make.
test-all:
	@$(MAKE) --no-print-directory PG=15 test
	@$(MAKE) --no-print-directory PG=16 test-compat
	@$(MAKE) --no-print-directory PG=18 test-compat
	$(call banner,pg_upgrade 16 -> 18: scripts/upgrade-test.sh)
	@$(MAKE) --no-print-directory upgrade-test UPGRADE_VERSIONS="16 18"
	@printf '\n==== all tiers passed on 15; regression, end-to-end on 16 and 18; pg_upgrade 16 -> 18 ====\n'

# pg_upgrade through UPGRADE_VERSIONS in turn (16 -> 18) of a cluster with a TVIEW and keys
# queued but not applied at shutdown; writes must converge after each step
# (scripts/upgrade-test.sh). Installs the extension into every version first.
UPGRADE_VERSIONS ?= 16 18
upgrade-test:
	@for v in $(UPGRADE_VERSIONS); do $(MAKE) --no-print-directory PG=$$v install || exit 1; done
	@scripts/upgrade-test.sh $(UPGRADE_VERSIONS)
