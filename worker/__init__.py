"""The worker side: engines, audio preparation, the transcribe task, health and the per-VM supervisor."""
