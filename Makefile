# segloss_d2 — the README's two commands: `make demo` and `make test`.
PY := .venv/bin/python
# Extras installed with segloss_d2: dev (pytest, ruff) and ray (the search's Ray backend).
EXTRAS ?= dev,ray
DEMO_ARGS ?=
PYTEST_ARGS ?=

.PHONY: install demo test test-fast lint bench study clean

install:
	SEGLOSS_EXTRAS=$(EXTRAS) bash tools/install.sh

demo: install
	$(PY) tools/demo.py $(DEMO_ARGS)

test: install
	$(PY) -m pytest tests $(PYTEST_ARGS)

# The unit tests only: no end-to-end runs of the demo, the study, train_net or gpu_check (e2e),
# no whole searches, subprocesses, Ray clusters or Triton interpreter runs (slow).
test-fast: install
	$(PY) -m pytest tests -m "not e2e and not slow" $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check .

# The search-quality study (docs/search_study.md, which gives both modes' measured wall times):
# --quick by default; `make study STUDY_ARGS=` runs the full study.
STUDY_ARGS ?= --quick
study: install
	$(PY) benchmarks/study_search.py $(STUDY_ARGS)

bench: install
	$(PY) benchmarks/bench_loss.py
	$(PY) benchmarks/bench_eval.py
	$(PY) benchmarks/bench_search.py

clean:
	rm -rf output .pytest_cache .ruff_cache
