"""The device channel: requests signed by the device's enrolled key, check-in and command results."""
