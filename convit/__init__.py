"""Train ConViT with MindSpore: model, data, trainer. Importing this package does not import MindSpore."""

__version__ = "0.1.0"
