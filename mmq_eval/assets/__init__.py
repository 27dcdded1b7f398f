"""Packaged model checkpoints (the trained shapes BLIP-2)."""
