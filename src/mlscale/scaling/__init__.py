"""Scaling laws: IsoFLOP sweeps, Chinchilla / Kaplan / IsoFLOP fits, bootstrap intervals, plans."""
