# `make demo`: a small weight-decay sweep into ./groklab.db and a report in ./report.
# `make test`:  the test suite. Both create .venv and install groklab into it first.
VENV ?= .venv
PY := $(VENV)/bin/python
GROKLAB := $(VENV)/bin/groklab

.PHONY: install demo test lint docs clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

demo: install
	$(GROKLAB) sweep examples/wd_sweep.yaml
	$(GROKLAB) report --sweep wd-demo -o report

test: install
	$(PY) -m pytest -q

docs: install
	$(PY) -c "from groklab import reference; reference.update_readme('README.md')"

lint: install
	$(VENV)/bin/ruff check groklab tests bench examples

clean:
	rm -rf $(VENV) report export *.egg-info
