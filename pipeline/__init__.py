"""dmc: a causal U-Net diffusion model that composes music as MIDI."""

import os

# OpenMP reads its wait policy once, when torch loads libgomp, and every dmc entry point (the `dmc`
# command, each stage) imports this package before torch. Passive: an idle OpenMP thread sleeps instead
# of spinning, so a multi-threaded torch slows down rather than stalls when another process takes one of
# its cores (pipeline/threads.py). A policy set in the environment is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
