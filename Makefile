# flowlabel: `make demo`, `make test` and `make bench` do all set-up on a fresh machine.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.flowlabel-installed
# torch is installed first, unless the venv has one already. From PyPI that is the CUDA build on Linux
# (what a GPU machine wants). CPU-only machines can take the much smaller CPU build from PyTorch's index:
#   make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu
# Nothing else depends on that index: by default it is not used.
TORCH       ?= torch==2.13.0
TORCH_INDEX ?=

.PHONY: setup demo lint test test-fast bench gpu-check clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || \
		$(PY) -m pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test,perceiver]"
	touch $(STAMP)

demo: setup
	$(PY) -m jobs.demo

# ruff (pinned in the test extra) formats and lints; `make test` fails on either.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

# The project's real test data (tests/conftest.py); optional: the output suite of `bench` uses its videos.
FLOWLABEL_TEST_DATA ?= ../shared/data
BENCH_VIDEOS := $(wildcard $(FLOWLABEL_TEST_DATA)/videos)

# Minutes on a 2-core CPU machine; writes BENCHMARKS.json and the tables of BENCHMARKS.md.
# Full run: $(VENV)/bin/flowlabel bench; on a GPU machine add --device cuda.
bench: setup
	$(VENV)/bin/flowlabel bench --quick $(if $(BENCH_VIDEOS),--videos $(BENCH_VIDEOS))

# On one GPU, about 8 minutes: every model on CUDA vs CPU (fp32) and bf16/fp16 EPE change, bench --device
# cuda --quick, the feed suite → gpu-check.json and BENCHMARKS.md. Without a CUDA device it fails and says so.
gpu-check: setup
	$(PY) -m jobs.gpu_check

clean:
	rm -rf demo-out .pytest_cache
