"""What Python 3.11 added that the appliance uses, also on 3.10 (Jetson Orin: JetPack 6, Ubuntu 22.04).

One place for the version checks, so the rest of the code reads as 3.11 code:
``StrEnum``, ``tomllib`` and an ISO 8601 parser that accepts what 3.11's
``datetime.fromisoformat`` accepts (``Z``, any number of fraction digits, basic format).

>>> class Colour(StrEnum):
...     RED = "red"
>>> str(Colour.RED), f"{Colour.RED}", f"{Colour.RED:>5}", Colour.RED == "red"
('red', 'red', '  red', True)
>>> fromisoformat("2023-11-14T22:13:20.25Z").timestamp()
1700000000.25
"""

from __future__ import annotations

import enum
import sys
from datetime import datetime

__all__ = ["StrEnum", "fromisoformat", "tomllib"]

if sys.version_info >= (3, 11):
    import tomllib
    from enum import StrEnum

    fromisoformat = datetime.fromisoformat
else:
    import tomli as tomllib
    from dateutil.parser import isoparse

    class StrEnum(str, enum.Enum):
        """3.11's ``enum.StrEnum``: ``str()`` and formatting give the value, not ``Class.MEMBER``."""

        __str__ = str.__str__
        __format__ = str.__format__

        @staticmethod
        def _generate_next_value_(name, start, count, last_values):
            return name.lower()

    def fromisoformat(text: str) -> datetime:
        """3.10's parser, then dateutil's for the forms 3.10 refuses (``Z``, ``.25``, ``20231114T221320``)."""
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            return isoparse(text)
