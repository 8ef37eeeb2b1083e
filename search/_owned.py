"""Updates that only a claimed job's owner may make, shared by the finalize queue and the timing queue.

A job is claimed by one process (its ``owner``) and moves on only while that process still holds it: a
worker that stalled past the grace period, and whose job another took over, changes nothing.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ._storage import db_now

NOW = object()
"""A value to set: the database's clock at the update (one clock for every machine)."""


def update_owned(engine: sa.Engine, table: Any, *, running: str, study: str, owner: str, values: dict[str, Any],
                 **match: Any) -> int:
    """Set ``values`` on ``owner``'s jobs of ``study`` in state ``running`` whose columns equal ``match``; rows changed."""
    with Session(engine) as s:
        if any(v is NOW for v in values.values()):
            now = db_now(s.connection())
            values = {k: now if v is NOW else v for k, v in values.items()}
        where = [table.study == study, table.owner == owner, table.state == running,
                 *(getattr(table, column) == value for column, value in match.items())]
        updated = s.execute(sa.update(table).where(*where).values(**values)).rowcount
        s.commit()
        return updated
