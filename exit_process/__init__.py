"""Leavers: exit cases, per-device checklists and evidence reports."""
