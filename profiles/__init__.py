"""Profiles and their payloads, the app catalogue and licence pools, and the reconciler (desired vs reported state)."""
