"""Pretraining support: contrastive losses and ``torch.distributed`` helpers."""
