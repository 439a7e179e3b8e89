"""Pretraining datasets; the public names are re-exported by ``equiav.training.data``."""
