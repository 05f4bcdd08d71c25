"""The interaction-stack machine: pure, no I/O. See `machine.py` for the rules."""

from p2e.machine.commands import CallAgent, Command, Fail, RejectCalls, Reply, Review, RunTools
from p2e.machine.machine import INITIAL, apply, fold, handle, handle_all, pending, trace
from p2e.machine.state import Frame, Rejection, State, Violation

__all__ = [
    "INITIAL",
    "CallAgent",
    "Command",
    "Fail",
    "Frame",
    "RejectCalls",
    "Rejection",
    "Reply",
    "Review",
    "RunTools",
    "State",
    "Violation",
    "apply",
    "fold",
    "handle",
    "handle_all",
    "pending",
    "trace",
]
