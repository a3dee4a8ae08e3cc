# The two commands a new user needs: `make repro` (the whole pipeline) and `make test`.
PYTHON ?= python3

.PHONY: install repro test lint

install:
	@# torch first and on its own: a range alone would pull a multi-GB CUDA build onto a CPU box.
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q torch==2.13.0
	$(PYTHON) -m pip install -q -e '.[dev,audio]'
	@# fluidsynth renders samples to audio, oggenc (vorbis-tools) and lame compress it; optional, so a
	@# failure here only costs the audio (or its compression).
	@{ command -v fluidsynth && command -v oggenc && command -v lame; } >/dev/null || \
		{ command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fluidsynth fluid-soundfont-gm vorbis-tools lame) \
		>/dev/null 2>&1; } || true
	@command -v fluidsynth >/dev/null || echo "note: fluidsynth not installed; samples will be MIDI only"
	@command -v fluidsynth >/dev/null && ! command -v oggenc >/dev/null && \
		echo "note: oggenc (vorbis-tools) not installed; ogg audio will be about 3x larger" || true

repro: install
	dvc repro

test: install
	@# pytest exits 5 when it collected no test: that is a failure, not a pass.
	$(PYTHON) -m pytest; rc=$$?; if [ $$rc -eq 5 ]; then echo "error: no tests ran"; exit 1; fi; exit $$rc

lint:
	$(PYTHON) -m ruff check .
