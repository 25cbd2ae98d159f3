"""The runtime: settings, the composition root (``app``), the process around ``serve``
(``server``, ``inflight``), the CLI, logging, the demo and the loopback simulators it and the
tests share."""
