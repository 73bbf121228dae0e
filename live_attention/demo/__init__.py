"""The demo: synthetic scenes, the project's own small ViT trained on them, and its training script."""
