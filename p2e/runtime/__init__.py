"""The runtime's logic without Ray: the supervisor's driver, the agent's step, replay."""
