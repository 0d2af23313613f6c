"""Edge telecom appliance: SIP registrar/PBX, GSM gateway and a Restcomm-compatible REST API."""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
