"""dmc: a causal U-Net diffusion model that composes music as MIDI."""
