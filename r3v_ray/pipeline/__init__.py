"""One round's stages (sample, build, train, evaluate), the self-training loop and what it prepares (the tiny model, the synthetic data)."""
