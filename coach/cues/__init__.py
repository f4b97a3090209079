"""The coaching brain: playbook (data), semantic and timing cue detection, per-call engine."""
