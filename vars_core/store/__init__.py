from vars_core.store.backend import KVBackend, MemoryBackend, Op
from vars_core.store.state import Keys, PartitionError, StateStore, UserScope

__all__ = ["KVBackend", "Keys", "MemoryBackend", "Op", "PartitionError", "StateStore", "UserScope"]
