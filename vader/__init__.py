"""vader: reward-gradient fine-tuning of text-to-video diffusion models.

Library code takes plain arguments and built objects; `train.py` is the only place that reads
Hydra configs.
"""
