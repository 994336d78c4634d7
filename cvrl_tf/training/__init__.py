"""The run machinery: settings (config), one job (job), the training loop (trainer),
checkpoints, strategies (distribute), preemption notices, summaries and evaluation."""
