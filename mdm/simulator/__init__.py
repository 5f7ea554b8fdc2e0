"""The fleet simulator: many devices of a realistic school against a running service, measured.

It drives the reference agent's own protocol code (mdm.agent) from one asyncio loop, so a server sees
what real agents send; `mdm simulate` and `mdm demo` use it, and benchmarks can too.
"""
