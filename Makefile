# The few commands a newcomer types. Each target creates .venv and installs what it needs first.
#   make demo   install everything, then train the default model on Fashion-MNIST (2 minutes) and label an image
#   make test   install everything, then run the whole test suite (what CI runs)
#   make docs   build the documentation site into _docs/
#   make lab    start JupyterLab on the notebooks
#   make fuzz   the parsers fuzzed with LEPTON_FUZZ_CASES generated inputs per target (the quick lane is in make test)
#   make mutation  the mutation score of the formula modules (mutmut), written to benchmarks/mutation.md
#   make load   lepton predict over 50,000 images: peak memory and images per second (benchmarks/load.md)
#   make lint   ruff on the package, the notebooks, the tests and the scripts (part of make test)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK=1

.PHONY: install system-deps demo test check-sync nbtest pytest slow fuzz fuzz-hypothesis mutation load lint docs lab readme clean

$(STAMP): settings.ini setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -e ".[dev]"
	$(BIN)/nbdev_install_hooks >/dev/null 2>&1 || true
	touch $(STAMP)

install: $(STAMP)

# Debian packages the project uses (data set, browser for the docs tests); installed only where missing and allowed.
system-deps:
	sh scripts/system-deps.sh

# The main job: check the data, train the fast recipe for 2 minutes, label one test image with the saved model.
demo: install system-deps
	$(BIN)/lepton data
	$(BIN)/lepton train --time-budget 120 --out runs/demo --overwrite
	$(BIN)/python scripts/demo_image.py runs/demo/example.png
	$(BIN)/lepton predict runs/demo runs/demo/example.png --plot runs/demo/example_prediction.png

# The whole test suite, in the order CI runs it.
test: install system-deps check-sync lint nbtest pytest

check-sync: install
	$(BIN)/python scripts/check_sync.py

nbtest: install
	OMP_NUM_THREADS=1 $(BIN)/nbdev_test --timing

pytest: install
	$(BIN)/python -m pytest tests -q

# The long lane: full training runs in the notebooks (minutes to an hour on 2 CPU cores).
slow: install
	$(BIN)/nbdev_test --flags slow --timing

# The long fuzz lane: the targets of tests/test_fuzz.py fed LEPTON_FUZZ_CASES generated inputs each by a fast driver
# (scripts/fuzz_long.py: no Hypothesis overhead, a time limit per case, a memory bound per worker), fresh random draws
# each run; a failing case is saved under build/fuzz-failures with its traceback (replay: --replay FILE).
# FUZZ_ARGS adds options (for example FUZZ_ARGS="--jobs 4 --only image,cli --seed 3").
LEPTON_FUZZ_CASES ?= 100000
FUZZ_ARGS ?=
fuzz: install
	OMP_NUM_THREADS=1 nice -n 10 $(BIN)/python scripts/fuzz_long.py --cases $(LEPTON_FUZZ_CASES) $(FUZZ_ARGS)

# The quick lane's Hypothesis tests with LEPTON_FUZZ_CASES cases per target (hours on 2 CPU cores at 100,000).
fuzz-hypothesis: install
	LEPTON_FUZZ_CASES=$(LEPTON_FUZZ_CASES) OMP_NUM_THREADS=1 $(BIN)/python -m pytest tests/test_fuzz.py -q \
		--hypothesis-show-statistics

# Mutation testing of the formula modules (activations, conv, svm, gan_losses, metrics) with mutmut, in a scratch copy
# (build/mutation); the score per module and every surviving mutant go to benchmarks/mutation.md. Long: not in CI.
mutation: install
	OMP_NUM_THREADS=1 nice -n 10 $(BIN)/python scripts/mutation.py

# Load: lepton predict over a folder of 50,000 images (peak resident memory, images per second).
load: install
	OMP_NUM_THREADS=1 nice -n 10 $(BIN)/python scripts/load_predict.py --images 50000

# Lint: ruff (its settings in ruff.toml) on the exported package, the notebooks, the tests and the scripts.
lint: install
	$(BIN)/ruff check lepton_nb nbs tests scripts

readme: install
	$(BIN)/python scripts/make_readme.py

# The documentation site, built from the notebooks into _docs/: Quarto where it is installed, else smalldocs, from the
# one _quarto.yml. The site loads nothing from other hosts (KaTeX and mermaid come from the npm registry once, into
# .cache/docs-vendor/). Serve it with: python -m http.server -d _docs 8000
docs: install
	$(BIN)/python scripts/build_docs.py

# JupyterLab on the notebooks; lepton_nb is installed in editable mode, so kernels import this checkout's package.
# LAB_ARGS adds options (for example LAB_ARGS=--no-browser). As root, JupyterLab needs --allow-root.
LAB_ARGS ?=
lab: install
	$(BIN)/jupyter lab --ServerApp.root_dir=nbs $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

clean:
	rm -rf _docs _proc build dist *.egg-info
