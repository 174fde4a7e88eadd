# The two commands of the README. Each creates or updates .venv first.
.PHONY: serve test lint

# Main job: the bundled model over HTTP on 127.0.0.1:8000 (it prints the address; Ctrl-C stops it).
serve:
	@bash scripts/setup.sh
	.venv/bin/seekmoe serve

# One thread per test process: the tests use tiny models, whose small ops only wait on a second OpenMP thread.
test:
	@bash scripts/setup.sh test
	.venv/bin/ruff check .
	.venv/bin/lint-imports
	OMP_NUM_THREADS=1 .venv/bin/pytest

lint:
	.venv/bin/ruff check .
	.venv/bin/lint-imports
