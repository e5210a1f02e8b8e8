# `make run`: set up .venv and run the whole pipeline on the embedded default.
# `make test`: set up .venv and run the test suite.
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
CORES ?= all
TEST_WORKERS ?= 2

.PHONY: setup run test report restamp clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

run: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --cores $(CORES)

report: run
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --report report.html

test: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup

# After `dvc pull` on a fresh clone: record Snakemake's provenance of the pulled outputs, so
# `snakemake` reruns nothing (only while `dvc status` is clean: the pulled files match the code).
restamp: setup
	$(BIN)/dvc status --quiet || { echo "dvc status is not clean: check out the commit whose dvc.lock matches the pulled data"; exit 1; }
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --touch --forceall --cores 1

clean:
	rm -rf .snakemake logs benchmarks
