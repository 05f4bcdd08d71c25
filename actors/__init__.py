"""Ray actors: thin shells that host core objects and move messages (see DESIGN.md, "Actors").

`actorset.spawn` creates a whole set (agents, evaluators, supervisors) under one name prefix.
"""

RAY_NAMESPACE = "p2e"
"""The Ray namespace of p2e's named actors (`ray list actors`, the dashboard)."""
