"""The dataset hub: serve dataset directories from one machine, use them on others.

Seed 002 (DSX Hub) with whole-content hashes. The server (:mod:`hashsync.hub.server`,
``hashsync serve ROOT``) needs the ``hub`` extra (FastAPI, uvicorn); nothing imported here does.
"""

from hashsync.hub._manifest import Manifest, ManifestEntry, scan_dataset
from hashsync.hub.client import DatasetHubClient
from hashsync.hub.storage import HubStorage

__all__ = ["DatasetHubClient", "HubStorage", "Manifest", "ManifestEntry", "scan_dataset"]
