"""The scripted world's conflict judge: it knows the catalog's conflict groups and errs at a
stated rate, as the scripted reranker has a stated AUC.

Two catalog actions conflict when they are the two sides of one conflict group. The judge's
verdict is flipped for a fixed share ``error_rate`` of action pairs, chosen by a hash of the
pair (never of the user), so the same pair always gets the same verdict. Actions the catalog
does not know are judged by the generic table (``vars_core.conflicts.table_conflict``).
"""

from __future__ import annotations

from vars_core.conflicts import pair_key, table_conflict
from vars_core.scripted.catalog import find_by_action


class ScriptedConflictJudge:
    def __init__(self, error_rate: float = 0.05) -> None:
        if not 0.0 <= error_rate <= 0.5:
            raise ValueError(f"the scripted conflict judge's error rate must be in [0, 0.5], got {error_rate}")
        self.error_rate = error_rate

    def truth(self, action_a: str, action_b: str) -> bool | None:
        """The catalog's answer, or None when it does not know both actions."""
        a, b = find_by_action(action_a), find_by_action(action_b)
        if a is None or b is None:
            return None
        return a.pref_id != b.pref_id and a.conflict_group is not None and a.conflict_group == b.conflict_group

    def __call__(self, action_a: str, action_b: str) -> bool:
        truth = self.truth(action_a, action_b)
        if truth is None:
            return table_conflict(action_a, action_b)
        wrong = int(pair_key(action_a, action_b)[:8], 16) / 16**8 < self.error_rate
        return truth != wrong
