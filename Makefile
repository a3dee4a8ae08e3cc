# The two commands a new user needs: `make repro` (the whole pipeline) and `make test`.
PYTHON ?= python3

.PHONY: install repro test lint

install:
	@# torch first and on its own: a range alone would pull a multi-GB CUDA build onto a CPU box.
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q torch==2.13.0
	$(PYTHON) -m pip install -q -e '.[dev,audio]'
	@# fluidsynth renders samples to audio; optional, so a failure here only costs the audio.
	@command -v fluidsynth >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fluidsynth fluid-soundfont-gm) \
		>/dev/null 2>&1; } || echo "note: fluidsynth not installed; samples will be MIDI only"

repro: install
	dvc repro

test: install
	@# pytest exits 5 when it collected no test: that is a failure, not a pass.
	$(PYTHON) -m pytest; rc=$$?; if [ $$rc -eq 5 ]; then echo "error: no tests ran"; exit 1; fi; exit $$rc

lint:
	$(PYTHON) -m ruff check .
