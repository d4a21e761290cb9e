# Two commands do everything on a fresh machine (only Python and gcc needed):
#   make demo   install, then tune resnet18 at 112..224 on this host and show the result
#   make test   install, then run the test suite
#   make bench  the reference benchmark into benchmarks/ (see benchmarks/README.md)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install demo test bench bench-ci bench-ci-baseline clean

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

# The CI regression gate (benchmarks/ci/README.md): resnet18 at 112 and 224, tuned against ONNX Runtime
# measured beside it, compared with the committed baseline of this host's CPU class as a ratio
# (machine-independent), 10% threshold, 95% bootstrap interval. Exit 0 ok, 1 regression, 2 unusable.
BENCH_CI_OUT  ?= /tmp/tunekit-bench-ci.json
BENCH_CI_MCPU  = $(shell $(BIN)/python -c "from tvm.target import codegen; print(codegen.llvm_get_system_cpu())" 2>/dev/null)
BENCH_CI_BASE ?= benchmarks/ci/baseline-$(BENCH_CI_MCPU).json
bench-ci: install
	@test -f $(BENCH_CI_BASE) || { echo "no CI baseline for this CPU class ($(BENCH_CI_BASE)); make one with: make bench-ci-baseline" >&2; exit 2; }
	$(BIN)/tunekit bench --model resnet18 --res 112,224 --target host --backends tuned,onnxruntime --output $(BENCH_CI_OUT)
	$(BIN)/tunekit compare $(BENCH_CI_BASE) $(BENCH_CI_OUT) --relative-to onnxruntime --max-regression 10%

bench-ci-baseline: install
	$(BIN)/tunekit bench --model resnet18 --res 112,224 --target host --backends tuned,onnxruntime --output $(BENCH_CI_BASE)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf out .pytest_cache
