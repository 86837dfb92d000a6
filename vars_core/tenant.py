"""The tenant's cold-start aggregate (DESIGN §4): a running sum and count of its users'
z_long, so a new live user can start from the tenant mean without reading anyone's data."""

from __future__ import annotations

import msgspec
import numpy as np

from vars_core.store import StateStore
from vars_core.store.backend import Op
from vars_core.store.state import decode, encode
from vars_core.types import UserVector


class TenantMean(msgspec.Struct):
    """The tenant's running sum and count of its users' z_long: the only cross-user value."""

    total: list[float] = []
    count: int = 0


def tenant_of(user_id: str) -> str:
    return user_id.split("/", 1)[0] if "/" in user_id else "default"


def tenant_key(store: StateStore, tenant: str) -> str:
    return f"{store.keys.ns}:tenant:{{{tenant}}}:zmean"


def tenant_mean(store: StateStore, tenant: str) -> TenantMean:
    data = store.backend.get(tenant_key(store, tenant))
    return decode(data, TenantMean) if data else TenantMean()


def tenant_mean_ops(store: StateStore, user_id: str, old: UserVector | None, new: UserVector | None) -> list[Op]:
    """Keep the tenant aggregate in step with one user's z_long (old -> new; None = absent)."""
    tenant = tenant_of(user_id)
    agg = tenant_mean(store, tenant)
    dim = len((new or old).z_long) if (new or old) else 0
    total = np.asarray(agg.total or [0.0] * dim, dtype=np.float64)
    count = agg.count
    if old is not None and _learned(old):
        total -= np.asarray(old.z_long)
        count -= 1
    if new is not None and _learned(new):
        total += np.asarray(new.z_long)
        count += 1
    return [Op("set", tenant_key(store, tenant), value=encode(TenantMean(total.tolist(), max(count, 0))))]




def _learned(vector: UserVector) -> bool:
    """A user counts in the aggregate once any step has moved its z_long."""
    return vector.updates + vector.pairwise_steps > 0
