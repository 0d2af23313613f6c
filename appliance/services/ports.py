"""The seams services are typed against.

The store is reached through its own class as a type only: services never import it at run
time, the composition root hands the instance in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from appliance.store.db import Store as StoreProtocol
else:
    StoreProtocol = object

__all__ = ["StoreProtocol"]
