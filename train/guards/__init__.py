"""What watches a run's health, each a component of the Trainer.

anomaly.py    non-finite losses and gradient norms, loss spikes: the update
              is withheld and a policy (skip, rollback, stop) decides the rest
record.py     the run's record of anomalies and skipped updates and batches,
              honoured by every later attempt so the run stays reproducible
hang.py       each rank's progress beacon and watchdog; collective timeouts
straggler.py  a per-log-step report of a rank persistently slower than the rest
"""
