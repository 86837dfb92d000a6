"""Seeded randomness that does not depend on execution order.

Every random choice of a stage comes from a generator derived from the campaign seed and
the stage's coordinates, so a session gives the same transcript whether it runs in-process
or through queued workers, alone or beside thousands of others.
"""

from __future__ import annotations

import hashlib

import numpy as np


def rng_for(seed: int, *parts: object) -> np.random.Generator:
    key = "|".join([str(seed), *map(str, parts)]).encode()
    digest = hashlib.sha256(key).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(digest[:16], "little")))
