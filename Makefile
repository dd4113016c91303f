# The two entry points of the README. Both run the idempotent set-up first.
.PHONY: setup run test lint bench soak screenshots

setup:
	@bash scripts/setup.sh

run: setup
	.venv/bin/tokpay serve $(ARGS)

lint: setup
	.venv/bin/ruff check tokpay tests bench examples
	.venv/bin/ruff format --check tokpay tests bench examples
	.venv/bin/mypy

test: lint
	.venv/bin/pytest -q

bench: setup
	.venv/bin/python bench/run_all.py $(ARGS)

soak: setup
	.venv/bin/python bench/soak.py $(ARGS)

screenshots: setup
	TOKPAY_SCREENSHOTS=$(CURDIR)/docs/screenshots .venv/bin/pytest -q tests/web/test_web_browser.py
