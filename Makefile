# flowlabel: `make demo`, `make test` and `make bench` do all set-up on a fresh machine.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.flowlabel-installed
# The CPU build of torch 2.13.0 is installed first (GPU machines keep a torch already in the venv),
# so that resolving the project does not pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0

.PHONY: setup demo test test-fast bench gpu-check clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test,perceiver]"
	touch $(STAMP)

demo: setup
	$(PY) -m jobs.demo

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

# Minutes on a 2-core CPU machine; writes BENCHMARKS.json and the tables of BENCHMARKS.md.
# Full run: $(VENV)/bin/flowlabel bench; on a GPU machine add --device cuda.
bench: setup
	$(VENV)/bin/flowlabel bench --quick

# On one GPU, about 8 minutes: every model on CUDA vs CPU (fp32) and bf16/fp16 EPE change, bench --device
# cuda --quick, the feed suite → gpu-check.json and BENCHMARKS.md. Without a CUDA device it fails and says so.
gpu-check: setup
	$(PY) -m jobs.gpu_check

clean:
	rm -rf demo-out .pytest_cache
