"""Everything that runs inside one training worker process.

Importing this package is cheap: DeepSpeed and W&B load only when a worker
starts, so the CLI stays fast.
"""
