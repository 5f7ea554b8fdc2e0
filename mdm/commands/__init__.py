"""The command queue: commands are recorded before delivery and delivered at least once."""
