# The two commands of the README. Each creates or updates .venv first.
.PHONY: serve test lint

# Main job. Until the HTTP server lands it shows what the bundled configs cost (seekmoe inspect).
serve:
	@bash scripts/setup.sh
	.venv/bin/seekmoe inspect deepseek-v2-lite

test:
	@bash scripts/setup.sh test
	.venv/bin/ruff check .
	.venv/bin/pytest

lint:
	.venv/bin/ruff check .
