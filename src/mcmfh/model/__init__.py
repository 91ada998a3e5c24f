"""The MCMFH model: DV-MLP, MoE fusion transformer, hashing heads."""
