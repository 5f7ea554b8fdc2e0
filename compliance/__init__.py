"""Compliance: rules, the nightly run, grace periods, remediation, quarantine, reports and webhooks."""
