"""The agent adapter: the service's own signed-JSON device protocol (shared/API.md, "The device channel").

Signatures, nonces and the JSON shapes live here; what a device is, what it reported and which commands
it is due come from the protocol-neutral core (mdm/channel/service.py). Apple's adapter sits beside it.
"""
