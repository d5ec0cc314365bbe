"""The base of every config section: frozen, unknown keys refused, fields documenting themselves."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

NonNegativeS = Annotated[float, Field(ge=0)]
PositiveS = Annotated[float, Field(gt=0)]


class Section(BaseModel):
    """A config section: `extra="forbid"` (a typo is an error), frozen, attribute docstrings."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
