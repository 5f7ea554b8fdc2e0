"""Imports every table module so SQLModel.metadata is complete (for migrations and test set-up).

A composition root like mdm/app.py: the one place in mdm allowed to name the domains' models.
"""

import importlib

MODEL_MODULES = (
    "mdm.auth.models",
    "mdm.audit.models",
    "mdm.access_policy.models",
    "mdm.people.models",
    "mdm.devices.models",
    "mdm.commands.models",
    "mdm.inventory.models",
    "mdm.channel.agent.models",
    "mdm.channel.apple.models",
    "mdm.scheduler_models",
    "mdm.webhooks.models",
    "enrollment.models",
    "profiles.models",
    "exit_process.models",
    "compliance.models",
    "compliance.os_releases.models",
)


def import_all_models() -> None:
    for module in MODEL_MODULES:
        importlib.import_module(module)
