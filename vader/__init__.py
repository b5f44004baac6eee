"""vader: aligning text-to-video diffusion models (reward gradients, GRPO, SFT, Diffusion-DPO).

Library code takes plain arguments and built objects; `train.py` is the only place that reads
Hydra configs. The folders show the structure:

    protocols.py   the interfaces: Backbone, Reward, Algorithm
    config.py      the typed schema; build.py turns a composed config into built objects
    loop/          the training loop, written once: updates, checkpoints, resume, signals, logging
    algorithms/    one module per algorithm (reward_grad, grpo, sft, dpo) and their losses
    sampling/      the differentiable sampler, the stochastic (log-probability) sampler, seeds
    evaluation/    paired base-vs-tuned evaluation, its statistics and gallery
    data/, io/     prompts and their order; video datasets: readers, clips, loader, cache;
                   tables, files and videos
    sweep.py, score.py   commands: `python -m vader.sweep`, `python -m vader.score`
"""
