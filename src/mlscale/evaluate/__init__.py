"""Evaluation of trained runs: loss, perplexity, bits per byte, and text generation."""
