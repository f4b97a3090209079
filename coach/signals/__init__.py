"""Signals fused from words, voice and timing: conversation dynamics and customer state."""
