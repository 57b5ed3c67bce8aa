# make demo: set up and run the quickstart sweep + report.  make test: set up and run every test.
# Both create .venv on first use and reinstall only when pyproject.toml or constraints.txt changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench setup lock clean-store

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	# torch/torchvision pinned to what pip serves here; any torch>=2.4 works elsewhere
	$(BIN)/pip install --quiet --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1" || \
		$(BIN)/pip install --quiet --disable-pip-version-check "torch>=2.4" "torchvision>=0.19"
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/optimstudy sweep experiments/quickstart.toml --workers 2
	$(BIN)/optimstudy report --experiment quickstart
	@echo
	@echo "Report page:  $(CURDIR)/analysis/report.html"
	@echo "MLflow UI:    $(BIN)/optimstudy ui      (then open http://127.0.0.1:5000)"

# two pytest-xdist workers, one per core: the suite is CPU-bound (both cores 99% busy through a run,
# /proc sampled), so three took as long as two (15:36 against 15:00 at 41945b0) and load the
# timing of the signal and timeout tests more
# PYTHONDONTWRITEBYTECODE emptied: the suite starts hundreds of Python processes, and where the variable
# is set (as in many container images) each compiles optimstudy's modules again (docs/performance.md)
test: $(STAMP)
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -q -n 2 --durations=30

# after upgrading a library in .venv and a green make test: record the versions CI will install
lock:
	{ sed -n '1,3p' constraints.txt; $(BIN)/pip freeze --exclude-editable --disable-pip-version-check | grep -v '^optimstudy'; } > constraints.new
	mv constraints.new constraints.txt

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py
