"""Evaluation: held-out losses, generation, FID and CLIP score."""
