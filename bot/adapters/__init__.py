"""Outbound adapters of the core's ports: the PagerDuty REST and Events clients, the provisioners,
and the infrastructure they share (one retry policy, one rate limiter, one coalescing cache) and
the Prometheus metrics."""
