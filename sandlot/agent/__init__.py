"""The sandlot agent: the small daemon every sandbox runs.

Standard library only, Python 3.9+, started with ``python3 -I -S``: it runs inside images
we do not control and its start-up is on every user's critical path. The host side imports
:mod:`sandlot.agent.protocol` for the wire format; nothing else here is imported by the host.
"""
