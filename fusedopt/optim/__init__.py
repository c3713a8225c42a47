"""Fused optimizers, drop-in replacements for their torch.optim twins."""
from .adam import Adam, AdamW

__all__ = ["Adam", "AdamW"]
