"""The core: settings, storage, tokens and roles, audit log, people, devices, the app and the CLI."""
