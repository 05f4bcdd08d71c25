"""Tools that agents call: typed functions, their schemas, the registry, and the runner.

Importing this package registers the built-ins (calculator, clock, notes, weather) in `REGISTRY`.
"""

from p2e.tools import builtin as builtin
from p2e.tools.registry import REGISTRY, Registry, Tool, ToolContext, tool
from p2e.tools.run import run_call, run_calls

__all__ = ["REGISTRY", "Registry", "Tool", "ToolContext", "builtin", "run_call", "run_calls", "tool"]
