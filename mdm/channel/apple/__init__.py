"""The Apple adapter: Apple's MDM protocol (shared/API.md, "Apple devices").

Plist check-in and command endpoints, the `Mdm-Signature` CMS check, intents rendered into Apple's
commands, answers mapped back into results and inventory pieces, and APNs wake-ups. What a device is,
what it reported and which commands it is due come from the protocol-neutral core (mdm/channel/service.py);
what it needs from a domain (binding an identity the SCEP server issued, a signed profile) reaches it
through the hooks the bootstrap wires (mdm/hooks.py). It sits beside the agent's adapter and never imports it.
"""
