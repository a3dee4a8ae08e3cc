"""The network and its training: the U-Net, the diffusion process, checkpoints (the train stage)."""
