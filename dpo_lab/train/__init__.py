"""Training: DPOSettings and the trainer, batching, checkpoints, resume, preemption, guards, speed."""
