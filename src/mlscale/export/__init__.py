"""Exporting runs to other ecosystems (Hugging Face transformers)."""
