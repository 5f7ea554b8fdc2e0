"""What devices report at check-in: the latest snapshot, installed apps and installed profiles."""
