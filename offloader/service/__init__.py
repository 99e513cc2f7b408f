"""The long-running service: the scheduler (aligned ticks, signals, config reloads, the
maintenance and retention passes between cycles) and its Prometheus metrics."""
