# edgewatch — `make demo` and `make test` are all a fresh machine needs (Python 3.11; a JDK and Maven for the tests).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# reinstall whenever the dependencies change
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
DEMO_SECONDS ?= 30
UV := uv==0.13.8

.PHONY: demo test faults lint bench nab clean

# uv installs the same pins in seconds (parallel downloads, its own cache; pip took minutes here);
# plain pip when uv cannot be had
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	( $(BIN)/python -m pip install --quiet $(UV) && $(BIN)/uv pip install --quiet --python $(BIN)/python $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS)) --editable '.[dev]' ) \
		|| $(BIN)/python -m pip install --quiet --editable '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	$(BIN)/edgewatch demo --seconds $(DEMO_SECONDS)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# long fault-injection tests (a 120 s Kafka freeze, a 60 s IoT Hub outage), left out of `make test`; figures in RELIABILITY.md
faults: $(STAMP)
	$(BIN)/python -m pytest -m faults -p no:cacheprovider tests

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# the anomaly flow vs references, then the RUL flow over C-MAPSS (trains its model once; skipped without the data)
bench: $(STAMP)
	$(BIN)/edgewatch bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
