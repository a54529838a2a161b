# Two commands do everything (see README):
#   make demo   set up, build the default model if missing, serve it, show a prediction
#   make test   set up, then lint, type-check and run the whole test suite
#   make image-test  build both images with podman and run them (docs/deploy.md)
#   make install-test  the serving image's venv rebuilt without an engine (no torch)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.bnfold-installed
PYTEST_ARGS ?=
# pytest-xdist: two workers, as many as CI's cores. Each test file runs whole
# on one worker (its module fixtures are built once, its tests never run beside
# each other) and tests/conftest.py hands out the longest files first (hence
# no xdist reorder). `make pytest PYTEST_XDIST=` runs in one process.
PYTEST_XDIST ?= -n 2 --dist loadfile --no-loadscope-reorder

.PHONY: demo test setup lint typecheck pytest bench clean browser image-test install-test

demo: $(STAMP)
	$(BIN)/bnfold demo $(ARGS)

test: $(STAMP) browser lint typecheck pytest

setup: $(STAMP)

# torch is pinned by constraints.txt to the CPU wheel; see the README.
# pip byte-compiles at install (about 80 s): no --no-compile, because where
# PYTHONDONTWRITEBYTECODE is set (CI) nothing compiled on import is kept and
# every subprocess would compile torch again (measured: the timm tests 5x slower).
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[train,dev,bench,timm]'
	touch $@

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy on the package as the wheel lays it out (converter/, service/ and
# folding/ mapped into bnfold/), reporting the repository's paths.
typecheck: $(STAMP)
	$(BIN)/python tools/typecheck.py

# xdist hands out tests by node id and schemathesis gives all of a test's
# operations one id (each would run once): that file runs in one process after.
PYTEST_ONE_PROCESS := tests/robustness/test_robust_openapi_fuzz.py
pytest: $(STAMP)
	$(BIN)/pytest $(PYTEST_XDIST) --ignore=$(PYTEST_ONE_PROCESS) $(PYTEST_ARGS)
	$(BIN)/pytest $(PYTEST_ARGS) $(PYTEST_ONE_PROCESS) || [ $$? = 5 ]

# Headless Chromium and its driver for the web page's tests (tests/web), from
# Debian's packages, only when missing (needs root; .ci/run calls it).
# The web page's tests drive Debian's headless Chromium; as root it is
# installed when missing, otherwise those tests are skipped with the reason.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends chromium chromium-driver; \
	  else echo "chromium and chromium-driver are missing (apt-get install them as root): the browser tests will be skipped"; fi

# Both Dockerfile targets built with podman and checked as a user would: HTTP
# and gRPC inference, healthcheck, non-root, read-only root, SIGTERM drain,
# compose up/down, kube play of the Kubernetes pod templates (docs/deploy.md,
# "What CI runs: the image test"). Installs podman when missing (needs root);
# says why and exits 0 where the engine cannot run.
image-test: $(STAMP)
	BNFOLD_PYTHON=$(abspath $(BIN))/python deploy/image-test/run.sh

# The serving image's Python environment rebuilt outside the engine: a fresh
# venv, `pip install -c constraints.txt .` of exactly what the Dockerfile
# copies (no train extra), then no torch, the CLI, `bnfold serve` answering
# (docs/deploy.md). A venv and a pip install, about a minute: .ci/run runs it
# beside image-test, not in `make test`.
install-test: $(STAMP)
	BNFOLD_SLOW_INSTALL_TEST=1 $(BIN)/pytest -q -p no:cacheprovider tests/deploy/test_service_image_install.py

# Benchmarks write bench/results/ (folding ~3 min, serving ~10 min).
bench: $(STAMP)
	$(BIN)/python -m bench.fold.bench_fold
	$(BIN)/python -m bench.serve

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
