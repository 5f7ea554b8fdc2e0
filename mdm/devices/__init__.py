"""The device registry: every device the school knows, its lifecycle state and its latest verdicts."""
