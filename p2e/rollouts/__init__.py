"""Rollouts: sweeps of episodes (teams x variants x scenarios x repeats) from a YAML spec.

`spec` reads and checks the spec, `plan` expands it into episodes, `coordinator` runs them over
the actor set, `store` keeps the rows, `stats` summarises and compares, `adaptive` decides the
rounds of a successive-halving sweep, `export` writes them out.
"""
