"""A media worker process: one pjsua2 endpoint, driven over a Unix control socket.

Run as ``python -m appliance.media.worker``. Only this package imports pjsua2; besides its own
modules it imports L0 modules only (``media.protocol``, ``errors``).
"""
