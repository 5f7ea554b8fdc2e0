"""The school's access policy: per ownership category, allowed in school and which network access."""
