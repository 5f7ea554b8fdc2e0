"""API tokens and roles for people and integrations."""
