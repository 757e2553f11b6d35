# fcnseg — two commands: `make demo` (train on the bundled HeLa data) and `make test`.
VENV      := .venv
PY        := $(VENV)/bin/python
FCNSEG    := $(VENV)/bin/fcnseg
STAMP     := $(VENV)/.setup-done
PYTEST_ARGS ?=

.PHONY: setup test test-fast demo clean-venv

# Set-up is re-run when a file it depends on changes; scripts/setup.sh itself is idempotent.
$(STAMP): scripts/setup.sh scripts/install_caffe.sh scripts/check_caffe.py pyproject.toml $(wildcard scripts/caffe_patches/*.patch)
	bash scripts/setup.sh
	touch $@

setup:
	bash scripts/setup.sh
	touch $(STAMP)

# The whole suite, slow tests (full-size VGG16, real data) included.
test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Everything but the tests marked slow.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
