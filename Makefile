# Transfer Learning Lab: `make run` starts the app, `make test` runs every test.
PY     ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PORT   ?= 8501

.PHONY: install install-ray run test test-fast browser bench screenshots clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): pyproject.toml requirements.txt requirements-nodeps.txt requirements-dev.txt constraints.txt | $(BIN)/python
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -r requirements.txt -r requirements-dev.txt -c constraints.txt
	$(BIN)/pip install --no-deps -r requirements-nodeps.txt
	$(BIN)/pip install --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

# Ray, for TL_EXECUTOR=ray (runs on a cluster; tests/test_ray.py starts a two-node one on this machine).
RAY_STAMP := $(VENV)/.installed-ray
$(RAY_STAMP): requirements-ray.txt $(STAMP)
	$(BIN)/pip install -r requirements-ray.txt -c constraints.txt
	touch $(RAY_STAMP)

install-ray: $(RAY_STAMP)

run: install
	$(BIN)/python -m streamlit run app.py --server.port $(PORT)

# Debian's chromium drives the real-browser tests (Playwright's own browser download is blocked offline).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update && apt-get install -y --no-install-recommends chromium fonts-dejavu-core)

test: install install-ray browser
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not browser and not slow"

# Every benchmark writes its figures to benchmarks/results/<name>.json (cold caches; see benchmarks/README.md);
# the last step lists the README figures that no longer match (`readme_figures.py --fix` rewrites them).
bench: install install-ray browser
	$(BIN)/python benchmarks/bench_feature_extraction.py
	$(BIN)/python benchmarks/bench_feature_extraction.py --whole-process
	$(BIN)/python benchmarks/bench_feature_extraction.py --cache-key
	$(BIN)/python benchmarks/bench_classroom.py --students 10 30 --workload both
	$(BIN)/python benchmarks/bench_classroom.py --browser 30 --browser-only
	$(BIN)/python benchmarks/bench_text.py
	$(BIN)/python benchmarks/bench_labs.py
	$(BIN)/python benchmarks/bench_data_cache.py
	-$(BIN)/python benchmarks/readme_figures.py

# The README's screenshots: the browser test takes them (artifacts/screenshots/); this copies them to docs/img/.
screenshots: install browser
	$(BIN)/python -m pytest -q tests/test_browser.py tests/test_browser_inspect.py
	for p in home backbone data inspect; do cp artifacts/screenshots/$$p.png docs/img/app_$$p.png; done
	cp artifacts/screenshots/train_full.png docs/img/app_train.png
	for p in inspect_what_changed inspect_feature_space inspect_grad_cam inspect_cell labs_text; do cp artifacts/screenshots/$$p.png docs/img/app_$$p.png; done

clean:
	rm -rf $(VENV) .pytest_cache
