# `make run`: set up .venv and run the whole pipeline on the embedded default.
# `make test`: set up .venv, run the test suite, build the docs strictly, then run the measure
# tests under other kernels.
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
CORES ?= all
TEST_WORKERS ?= 2

# The measure tests, run again by `make test` under other CPU kernels: MKL's bitwise-compatible
# and AVX2 code paths, and ATen's baseline (no-AVX) kernels. Rounding differs between them as it
# does between users' CPUs, so a test that holds for one kernel's rounding only fails here.
# Each kernel path compiles into its own TorchInductor cache: the cache key ignores
# ATEN_CPU_CAPABILITY, so a kernel vectorised under AVX2 and reloaded under `default` fails
# to build ('at::vec' has not been declared).
MEASURE_TESTS := tests/test_measures.py tests/test_measures_properties.py tests/test_suite.py \
	tests/test_curvature.py tests/test_spectrum.py tests/test_invariant.py tests/test_conv.py \
	tests/test_output_curvature.py tests/test_batchnorm_train.py tests/test_models.py \
	tests/test_losses.py tests/test_krylov.py tests/test_xtrace.py
KERNEL_PATHS := "MKL_CBWR=COMPATIBLE ATEN_CPU_CAPABILITY=default" "MKL_CBWR=AVX2"

.PHONY: setup run test test-kernels docs front-door report restamp clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,docs,bench]'
	touch $(STAMP)

setup: $(STAMP)

run: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --cores $(CORES)

report: run
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --report report.html

test: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup
	$(MAKE) --no-print-directory docs
	$(MAKE) --no-print-directory test-kernels

# The docs site into site/ (mkdocs.yml); strict: a broken link or reference fails the build.
docs: setup
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(BIN)/mkdocs build --strict --quiet

# The README's claims table and figure from the default study's last run (docs/front_door.py).
front-door: setup
	$(BIN)/python docs/front_door.py

test-kernels: setup
	@for kernels in $(KERNEL_PATHS); do \
	    echo "== measure tests under $$kernels"; \
	    env $$kernels TORCHINDUCTOR_CACHE_DIR="$$(mktemp -d)" PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q \
	        -n $(TEST_WORKERS) --dist loadgroup $(MEASURE_TESTS) || exit 1; \
	done

# After `dvc pull` on a fresh clone: record Snakemake's provenance of the pulled outputs, so
# `snakemake` reruns nothing (only while `dvc status` is clean: the pulled files match the code).
restamp: setup
	$(BIN)/dvc status --quiet || { echo "dvc status is not clean: check out the commit whose dvc.lock matches the pulled data"; exit 1; }
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --touch --forceall --cores 1

clean:
	rm -rf .snakemake logs benchmarks
