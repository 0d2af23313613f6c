"""RCML (Restcomm's TwiML dialect): parsing into verbs, pure; execution lives in services."""
