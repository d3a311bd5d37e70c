"""The dataset hub: serve dataset directories from one machine, use them on others.

Seed 002 (DSX Hub) with whole-content hashes. The server (:mod:`hashsync.hub.server`,
``hashsync serve ROOT``) needs the ``hub`` extra (FastAPI, uvicorn); nothing imported here does.
"""

from hashsync.hub._manifest import Manifest, ManifestEntry, scan_dataset
from hashsync.hub.client import DatasetHubClient

__all__ = ["DatasetHubClient", "Manifest", "ManifestEntry", "scan_dataset"]
