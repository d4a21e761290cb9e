# Two commands do everything on a fresh machine (only Python and gcc needed):
#   make demo   install, then tune resnet18 at 112..224 on this host and show the result
#   make test   install, then run the test suite
#   make bench  the reference benchmark into benchmarks/ (see benchmarks/README.md)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools
	# torch==2.13.0 is pinned so pip takes the CPU build, never the CUDA wheels.
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -c "import tvm, torch, onnx, xgboost; from tvm.s_tir import meta_schedule; print('installed: tvm', tvm.__version__, '| torch', torch.__version__)"
	touch $(STAMP)

# The main job on the embedded defaults: tune resnet18 at 112, 168 and 224 on this host into
# tuning_logs/tunekit.db with a small budget (a few minutes on 2 cores; rerunning resumes and
# is instant once done), show what is tuned, then build it and measure it against PyTorch.
DEMO_TRIALS ?= 2
demo: install
	$(BIN)/tunekit flops --model resnet18 --res 112..224
	$(BIN)/tunekit tune --model resnet18 --res 112..224 --target host --trials-per-task $(DEMO_TRIALS)
	$(BIN)/tunekit db list
	$(BIN)/tunekit bench --model resnet18 --res 112..224 --target host --repeats 5 --processes 2

# The reference benchmark: resnet18 at 112..448 on this host, tuned artifacts built from
# tuning_logs/tunekit.db (whatever tuning exists; none means default schedules), against
# PyTorch on oneDNN, untuned TVM, ONNX Runtime and OpenVINO, each in its own worker process,
# 3 fresh processes x 10 repeats. CI: make bench BENCH_OUT=/tmp/new, then
# tunekit compare benchmarks/resnet18-host.json /tmp/new.json --max-regression 5% --backends tuned
BENCH_OUT ?= benchmarks/resnet18-host
bench: install
	$(BIN)/tunekit bench --model resnet18 --res 112..448 --target host \
		--output $(BENCH_OUT).json --output $(BENCH_OUT).md --plot $(BENCH_OUT).png

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf out .pytest_cache
