# Shortcuts; the scripts are the source of truth (they also run on a machine without make).
.PHONY: setup run test lint bench bench-quick thrash
setup:
	./scripts/setup.sh
run:
	./scripts/run.sh
test:
	./scripts/test.sh
lint: setup
	.venv/bin/ruff check blockstore api cli nbd_plugin bench tests && .venv/bin/mypy
bench: setup
	.venv/bin/blockstore bench
bench-quick: setup
	.venv/bin/blockstore bench --quick

# The thrasher (bench/thrash.py): two hosts, fault schedule, verifying NBD clients. Defaults are
# the long run (200+ fault cycles, 20-40 minutes on 2 cores): make thrash SEED=3 CYCLES=50
SEED ?= 1
CYCLES ?= 220
DISKS ?= 3
THRASH_ARGS ?=
thrash: setup
	nice -n 10 .venv/bin/python bench/thrash.py --seed $(SEED) --cycles $(CYCLES) --disks $(DISKS) $(THRASH_ARGS)
