# vfm: `make demo` and `make test` work as the first command on a fresh clone (they install first).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Reinstall when the dependency list or the checkout's location changes (the install is editable).
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)-$(shell pwd | sha256sum | cut -c1-8)

SYNTH ?= data/synthetic
SYNTH_SHARDS ?= data/shards/synthetic
SYNTH_ARGS ?=
SHARD_ARGS ?=
WORKERS ?= 2

.PHONY: install shards synthetic demo test test-full bench lint clean-data

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]" 2>&1 | grep -v "is ignored: it is neither" || true
	$(PY) -c "import vfm, torch, lightning, open_clip, av, webdataset"
	rm -f $(VENV)/.installed-* && touch $@

ifdef CSV
# A real corpus: make shards CSV=results.csv VIDEOS=videos/ OUT=shards/ [SHARD_ARGS="--workers 8 --val-fraction 0.01"]
shards: install
	$(PY) -m data_prep.make_shards --csv $(CSV) --videos $(VIDEOS) --out $(OUT) --workers $(WORKERS) $(SHARD_ARGS)
else
# The embedded synthetic corpus, in WebVid's layout, through the same make_shards path.
shards: install $(SYNTH)/.complete
	$(PY) -m data_prep.make_shards --csv $(SYNTH)/clips.csv --videos $(SYNTH)/videos --out $(SYNTH_SHARDS)/clips --workers $(WORKERS) $(SHARD_ARGS)
	$(PY) -m data_prep.make_shards --csv $(SYNTH)/long.csv --videos $(SYNTH)/videos --out $(SYNTH_SHARDS)/long --workers $(WORKERS) --samples-per-shard 32 $(SHARD_ARGS)
	$(PY) -m data_prep.make_shards --csv $(SYNTH)/images.csv --videos $(SYNTH) --out $(SYNTH_SHARDS)/images --workers $(WORKERS) $(SHARD_ARGS)
	$(PY) -m data_prep.summarize $(SYNTH_SHARDS)
endif

$(SYNTH)/.complete: | install
	$(PY) -m data_prep.synthetic --out $(SYNTH) --workers $(WORKERS) $(SYNTH_ARGS)
	touch $@

demo: shards
	$(PY) -m vfm.demo

test: install
	$(PY) -m pytest -q

test-full: install
	$(PY) -m pytest -q -m "not gpu"

bench: install
	$(PY) -m vfm.bench

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check vfm data_prep tests

clean-data:
	rm -rf $(SYNTH) $(SYNTH_SHARDS)
