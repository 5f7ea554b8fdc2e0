"""Signed webhooks: other systems hear about compliance, enrolment and exit events as they happen.

Other domains call `service.emit` inside their own transaction; `jobs.deliver_due` sends the outbox.
In the core because every domain writes to it: a domain imports `mdm`, never another domain's outbox.
"""
