"""The reference device agent: enrols with a token, then checks in, applies commands and reports results.

It speaks the service's own JSON protocol (shared/API.md) the way any third-party agent must, so it doubles
as the fleet simulator's device and as the executable example of the device contract.
"""

from mdm.agent.client import (
    AgentClient,
    AgentError,
    AppliedCommand,
    RoundResult,
    build_csr,
    enroll_device,
    run_device,
)
from mdm.agent.inventory import App, CommandOutcome, Inventory, Profile
from mdm.agent.state import AgentState

__all__ = [
    "AgentClient",
    "AgentError",
    "AgentState",
    "App",
    "AppliedCommand",
    "CommandOutcome",
    "Inventory",
    "Profile",
    "RoundResult",
    "build_csr",
    "enroll_device",
    "run_device",
]
