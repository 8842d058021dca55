"""The jobyard autoscaler: grow and shrink the fleet from backlog and demand.

Three roles, as in nomad-autoscaler, typed in :mod:`autoscaler.roles` and registered
by name in :mod:`autoscaler.registry` (which ``jobyard autoscale`` picks from), and the
loop that runs them:

* a **metric source** (:mod:`autoscaler.metrics`) reads the backlog from Redis without
  consuming it: ready messages in every priority list, messages delivered but not
  acknowledged, running jobs from the agents' published state, and the CPU and memory
  requests of everything waiting;
* a **strategy** (:mod:`autoscaler.strategy`) is a pure function from that demand to a
  number of hosts of the provider's shape (first-fit-decreasing bin packing);
* a **host provider** (:mod:`autoscaler.providers`: ``local``, ``docker``, ``aws``) adds
  and removes hosts;
* the **control loop** (:mod:`autoscaler.loop`) alone holds safety: min/max, cooldown,
  scale-in stabilisation and hysteresis, and drain-before-remove (:mod:`autoscaler.drain`).

Every decision is an :class:`~autoscaler.action.Action` (direction, count, reason),
logged, pushed to Redis for ``jobyard status`` (:mod:`autoscaler.report`), written to a
timeline (:mod:`autoscaler.timeline`, plotted by :mod:`autoscaler.plot`) and counted in
Prometheus metrics (:mod:`autoscaler.telemetry`). Errors: :mod:`autoscaler.errors`.
"""
