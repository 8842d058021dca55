"""jobyard's operator tools: the ``jobyard`` command and what it shows.

A layer above :mod:`executor` and :mod:`autoscaler`, which never import it: the click
commands live here and call those packages' plain functions; status, job facts, logs,
dead letters, refused messages, Flower and the demo are read and rendered here.
"""
