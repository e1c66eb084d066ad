"""tuneguard: audit and protect the fine-tuning of large language models."""

__version__ = "0.1.0"
