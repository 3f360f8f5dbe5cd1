# Shortcuts; the scripts are the source of truth (they also run on a machine without make).
.PHONY: setup run test lint bench bench-quick
setup:
	./scripts/setup.sh
run:
	./scripts/run.sh
test:
	./scripts/test.sh
lint: setup
	.venv/bin/ruff check blockstore api nbd_plugin bench tests && .venv/bin/mypy
bench: setup
	.venv/bin/blockstore bench
bench-quick: setup
	.venv/bin/blockstore bench --quick
