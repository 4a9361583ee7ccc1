"""Names in Pyro's global parameter store that no two objects share.

Pyro keeps parameters in one process-wide store keyed by name. Models and guides in
this package register theirs under a prefix unique to the instance, so building a
second model (of any size) never picks up, or overwrites, the first one's values.
"""

import itertools

__all__ = ["unique_name"]

_counter = itertools.count()


def unique_name(prefix: str) -> str:
    """``prefix`` followed by a number no earlier call in this process returned."""
    return f"{prefix}_{next(_counter)}"
