"""Enrolment: tokens, the access-policy check at enrolment time, and the school's certificate authority."""
