"""Simulators of the services Ackgate talks to: real HTTP servers on loopback, for tests and ``ackgate demo``."""
