"""Pretraining: building the backbone and the task, the training loop, the multi-process launcher,
checkpoints and the frozen backbone."""
