"""Training: the NanoDet-Plus model in PyTorch, its losses, label assignment and trainer."""
