# fcnseg — two commands: `make demo` (train on the bundled HeLa data) and `make test`.
VENV      := .venv
PY        := $(VENV)/bin/python
FCNSEG    := $(VENV)/bin/fcnseg
# CAFFE=cuda: the pycaffe with CUDA kernels (docs/gpu.md); the default cpu is what CI uses.
CAFFE     ?= cpu
STAMP     := $(VENV)/.setup-done-$(CAFFE)
PYTEST_ARGS ?=

.PHONY: setup test test-fast demo demo-bacteria otsu clean-venv gpu-bundle fuzz fuzz-cli

DEMO_RAW  := data/hela_raw
DEMO_DATA := data/hela
DEMO_RUN  := runs/demo
BACT_RAW  := data/bacteria_raw
BACT_DATA := data/bacteria
BACT_RUN  := runs/demo-bacteria

# Set-up is re-run when a file it depends on changes; scripts/setup.sh itself is idempotent.
# The stamp names the Caffe variant the venv points at; setting up the other variant removes it.
$(STAMP): scripts/setup.sh scripts/install_caffe.sh scripts/check_caffe.py pyproject.toml $(wildcard scripts/caffe_patches/*.patch scripts/caffe_patches/cuda/*.patch)
	FCNSEG_CAFFE=$(CAFFE) bash scripts/setup.sh
	rm -f $(VENV)/.setup-done*
	touch $@

setup:
	FCNSEG_CAFFE=$(CAFFE) bash scripts/setup.sh
	rm -f $(VENV)/.setup-done*
	touch $(STAMP)

# The kernel tests run twice: as this CPU runs them, and with oneDNN and OpenBLAS held to AVX2 (what an AVX2-only
# CPU runs: no oneDNN Winograd there; docs/performance.md). On an AVX2-only CPU the second run repeats the first.
KERNEL_TESTS := tests/test_caffe_conv.py tests/test_caffe_layers.py tests/test_caffe_build.py
AVX2_ENV  := ONEDNN_MAX_CPU_ISA=AVX2 OPENBLAS_CORETYPE=Haswell

# The linter (configured in pyproject.toml), then the whole suite, slow tests (full-size VGG16, real data) included.
test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q $(PYTEST_ARGS)
	$(AVX2_ENV) $(PY) -m pytest -q $(KERNEL_TESTS)

# The fuzz campaign over every reader (docs/reliability.md, "Fuzzing"): coverage-guided with atheris, FUZZ_RUNS
# inputs per reader, niced; findings and OUT/summary.json under .fuzz/campaign. `make fuzz FUZZ_ENGINE=mutate` runs
# the seeded mutator instead (no atheris). The short run in CI is tests/test_fuzz.py.
FUZZ_RUNS   ?= 6000
FUZZ_ENGINE ?= atheris
fuzz: $(STAMP)
	test "$(FUZZ_ENGINE)" != atheris || $(PY) -m pip install -q -e ".[fuzz]"
	nice -n 10 $(PY) scripts/fuzz.py --engine $(FUZZ_ENGINE) --runs $(FUZZ_RUNS) --out .fuzz/campaign

# The CLI-level smoke run on the demo's files (after `make demo`): mutated files handed to the commands.
fuzz-cli: $(STAMP)
	nice -n 10 $(PY) scripts/fuzz_cli.py --run $(DEMO_RUN) --data $(DEMO_DATA) --work .fuzz/cli

# Everything but the tests marked slow.
test-fast: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)
	$(AVX2_ENV) $(PY) -m pytest -q -m "not slow" $(KERNEL_TESTS)

# The main job on real data: HeLa nuclei, frames 0-15 train, 16-19 val; a U-Net with BatchNorm from scratch,
# ~11 min of training on 2 cores (configs/demo_hela.yaml).
demo: $(STAMP)
	$(FCNSEG) data fetch-demo -o $(DEMO_RAW)
	grep -qs '^instances:' $(DEMO_DATA)/dataset.yaml || $(FCNSEG) data import --images $(DEMO_RAW)/hela_images.tif \
	    --labels $(DEMO_RAW)/hela_masks.tif --instances --tile 256 --val 16-19 -o $(DEMO_DATA) --overwrite
	rm -rf $(DEMO_RUN)
	$(FCNSEG) train configs/demo_hela.yaml --data $(DEMO_DATA) --out $(DEMO_RUN)
	$(FCNSEG) eval $(DEMO_RUN) --instances
	$(PY) scripts/demo_frame.py $(DEMO_RAW)/hela_images.tif 17 $(DEMO_RUN)/frame17.tif
	$(FCNSEG) infer --run $(DEMO_RUN) $(DEMO_RUN)/frame17.tif -o $(DEMO_RUN)/infer --overlay --instances
	$(FCNSEG) export $(DEMO_RUN) -o $(DEMO_RUN)/demo.onnx --with-preprocessing
	$(FCNSEG) infer --onnx $(DEMO_RUN)/demo.onnx $(DEMO_RUN)/frame17.tif -o $(DEMO_RUN)/infer_onnx --overlay --instances
	$(FCNSEG) export $(DEMO_RUN) --bioimageio -o $(DEMO_RUN)/demo.zip
	$(PY) scripts/otsu_baseline.py $(DEMO_RAW)/hela_images.tif $(DEMO_RAW)/hela_masks.tif --frames 16-19
	@$(PY) -c "import json; r = json.load(open('$(DEMO_RUN)/eval.json')); o = r['objects']; \
	  print('\ndemo done (frames 16-19): val mean IU %.4f (background/interior/boundary), foreground-vs-background' \
	        ' mean IU %.4f; objects AP@0.5 %.4f, AP@0.75 %.4f, SEG %.4f' % (r['mean_iu'], o['foreground_mean_iu'], \
	        o['overall']['ap50'], o['overall']['ap75'], o['overall']['seg'])); \
	  print('run folder $(DEMO_RUN)/ (metrics.jsonl, TensorBoard events, loss.png, val.png, best.caffemodel, eval.json)'); \
	  print('bioimage.io package $(DEMO_RUN)/demo.zip; curves: .venv/bin/tensorboard --logdir runs'); \
	  print('frame 17: $(DEMO_RUN)/infer/frame17.png, frame17_instances.tif, frame17_objects.csv, frame17_instances_overlay.png')"

# Sparse objects: phase-contrast bacteria (0.6 % foreground), imported with fcnseg's defaults (which pick
# --empty-tiles and --augment from the class fractions), frames 0-15 train, 16-19 val, ~5 min of training.
demo-bacteria: $(STAMP)
	$(FCNSEG) data fetch-demo --name bacteria -o $(BACT_RAW)
	test -f $(BACT_DATA)/dataset.yaml || $(FCNSEG) data import --images $(BACT_RAW)/bacteria_images.tif \
	    --labels $(BACT_RAW)/bacteria_masks.tif --binarize --tile 256 --val 16-19 -o $(BACT_DATA)
	rm -rf $(BACT_RUN)
	$(FCNSEG) train configs/demo_bacteria.yaml --data $(BACT_DATA) --out $(BACT_RUN)
	$(PY) scripts/otsu_baseline.py $(BACT_RAW)/bacteria_images.tif $(BACT_RAW)/bacteria_masks.tif --frames 16-19
	@$(PY) -c "import json; \
	  vals = [e for e in map(json.loads, open('$(BACT_RUN)/metrics.jsonl')) if e['event'] == 'val']; \
	  print('\nbacteria demo, val frames 16-19 (iteration, seconds since training started, mean IU, bacteria IU):'); \
	  [print('%5d %7.0f s  %.4f  %.4f' % (e['iter'], e['elapsed'], e['mean_iu'], e['per_class_iu'][1])) for e in vals]; \
	  print('run folder $(BACT_RUN)/ (metrics.jsonl, loss.png, val.png, best.caffemodel)')"

# The GPU check for a GPU machine without registries (docs/gpu-check.md): .gpu/ (run.sh, one tar.xz) of at most
# 60 MiB, checked here; CUDA pycaffe for sm_90 (FCNSEG_CUDA_ARCHS overrides), built once and cached.
gpu-bundle: $(STAMP)
	$(PY) scripts/gpu_bundle.py --out .gpu --max-mib 60

clean-venv:
	rm -rf $(VENV)
