# Shortcuts; the scripts are the source of truth (they also run on a machine without make).
.PHONY: setup run test lint bench soak
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
soak: setup
	.venv/bin/pytest -q -m slow
