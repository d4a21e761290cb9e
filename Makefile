# Two commands do everything on a fresh machine (only Python and gcc needed):
#   make demo   install, then tune resnet18 at 112..224 on this host and show the result
#   make test   install, then run the test suite
#   make bench  the reference benchmark into benchmarks/ (see benchmarks/README.md)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install demo test reference-db bench bench-ci bench-ci-baseline clean

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

# The reference benchmark: resnet18 at 112..448 on this host (make bench BENCH_MODEL=resnet50 BENCH_RES=112,224
# for another model or resolutions), against PyTorch on oneDNN, untuned TVM,
# ONNX Runtime and OpenVINO, each in its own worker process, 3 fresh processes x 10 repeats. Tuned
# artifacts are built from the reference records committed for this host's CPU class
# (tuning_logs/reference/<mcpu>-<cores>c/, imported into tuning_logs/reference-<mcpu>-<cores>c.db) when
# there are some, else from tuning_logs/tunekit.db (whatever tuning exists; none means default schedules).
# The host's class, <LLVM mcpu>-<physical cores>c: computed on first use (after install), then kept.
HOST_CLASS_PY = import psutil; from tvm.target import codegen; \
	print(f"{codegen.llvm_get_system_cpu()}-{psutil.cpu_count(logical=False)}c")
REF_CLASS = $(eval REF_CLASS := $$(shell $(BIN)/python -c '$(HOST_CLASS_PY)' 2>/dev/null))$(REF_CLASS)
REF_DIR   = tuning_logs/reference/$(REF_CLASS)
REF_DB    = $(if $(wildcard $(REF_DIR)),tuning_logs/reference-$(REF_CLASS).db,tuning_logs/tunekit.db)
BENCH_MODEL ?= resnet18
BENCH_RES   ?= 112..448
BENCH_OUT   ?= benchmarks/$(BENCH_MODEL)-$(REF_CLASS)
reference-db: install
	@if [ -d $(REF_DIR) ]; then \
		echo "reference records for $(REF_CLASS): $(REF_DIR) -> $(REF_DB)"; \
		$(BIN)/tunekit db import --db $(REF_DB) $(REF_DIR); \
	else \
		echo "no reference records for this CPU class ($(REF_CLASS)) in tuning_logs/reference/ (it has: $$(ls tuning_logs/reference | tr '\n' ' ')); tuned artifacts come from $(REF_DB) (default schedules where it has none). To tune from a class of the same vector ISA: $(BIN)/tunekit db import --db $(REF_DB) tuning_logs/reference/CLASS/, then $(BIN)/tunekit tune (README: Across CPU classes)" >&2; \
	fi

bench: reference-db
	$(BIN)/tunekit bench --model $(BENCH_MODEL) --res $(BENCH_RES) --target host --db $(REF_DB) \
		--output $(BENCH_OUT).json --output $(BENCH_OUT).md --plot $(BENCH_OUT).png

# The CI regression gate (benchmarks/ci/README.md): resnet18 at 112 and 224, tuned against ONNX Runtime
# measured beside it, compared with the committed baseline of this host's CPU class as a ratio
# (machine-independent), 7% threshold (calibrated: benchmarks/ci/README.md), 95% bootstrap interval. Exit 0 ok, 1 regression, 2 unusable.
BENCH_CI_OUT  ?= /tmp/tunekit-bench-ci.json
BENCH_CI_BASE ?= benchmarks/ci/baseline-$(REF_CLASS).json
bench-ci: reference-db
	@test -f $(BENCH_CI_BASE) || { echo "no CI baseline for this CPU class ($(BENCH_CI_BASE)); make one with: make bench-ci-baseline" >&2; exit 2; }
	$(BIN)/tunekit bench --model resnet18 --res 112,224 --target host --db $(REF_DB) --backends tuned,onnxruntime --output $(BENCH_CI_OUT)
	$(BIN)/tunekit compare $(BENCH_CI_BASE) $(BENCH_CI_OUT) --relative-to onnxruntime --max-regression 7%

bench-ci-baseline: reference-db
	$(BIN)/tunekit bench --model resnet18 --res 112,224 --target host --db $(REF_DB) --backends tuned,onnxruntime --output $(BENCH_CI_BASE)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf out .pytest_cache
