"""People (learners, staff, visitors) as the school's MIS knows them."""
