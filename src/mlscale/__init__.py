"""mlscale: raw web data to a trained language model and its scaling laws."""
__version__ = "0.1.0"
