"""Pretraining: the loop, optimizer and schedules, checkpoint/resume, metrics."""
