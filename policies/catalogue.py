"""The federation's data-element catalogue: what each agency's elements are (pure).

Agencies agree on element ids, types, units, ranges and classifications once; node mapping
files must match the catalogue, and program files are checked against it (the masking bound
depends on every element's declared range).
"""

from __future__ import annotations

import hashlib
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from xgate.errors import ConfigError, NotFound
from xgate.tomlfile import load_model

DEFAULT_CATALOGUE = Path(__file__).resolve().parent / "catalogue.toml"

AgencyId = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{1,31}$")]
ElementId = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{1,31}\.[a-z][a-z0-9_]{1,63}$")]


class ElementType(StrEnum):
    INT = "int"
    FLAG = "flag"
    CATEGORY = "category"


class Classification(StrEnum):
    CORE = "core"
    IMPORTANT = "important"
    GENERAL = "general"


class DataElement(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: ElementId
    agency: AgencyId
    type: ElementType
    unit: str = Field(min_length=1, max_length=40)
    min: int
    max: int
    classification: Classification
    description: str = ""
    categories: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> DataElement:
        if self.id.split(".")[0] != self.agency:
            raise ValueError(f"element '{self.id}' must be prefixed by its agency '{self.agency}'")
        if self.min > self.max:
            raise ValueError(f"element '{self.id}': min {self.min} > max {self.max}")
        if self.type is ElementType.FLAG and (self.min, self.max) != (0, 1):
            raise ValueError(f"flag element '{self.id}' must have range 0..1")
        if self.type is ElementType.CATEGORY and (self.min, self.max) != (0, len(self.categories) - 1):
            raise ValueError(f"category element '{self.id}' must have range 0..len(categories)-1")
        return self


class Catalogue(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    elements: tuple[DataElement, ...]

    @model_validator(mode="after")
    def _unique(self) -> Catalogue:
        seen: set[str] = set()
        for element in self.elements:
            if element.id in seen:
                raise ValueError(f"element '{element.id}' is declared twice")
            seen.add(element.id)
        return self

    def get(self, element_id: str) -> DataElement:
        for element in self.elements:
            if element.id == element_id:
                return element
        raise NotFound(f"data element '{element_id}' is not in the federation catalogue")

    def agencies(self) -> list[str]:
        return sorted({e.agency for e in self.elements})

    def of_agency(self, agency: str) -> list[DataElement]:
        return [e for e in self.elements if e.agency == agency]


def load_catalogue(path: Path = DEFAULT_CATALOGUE) -> tuple[Catalogue, str]:
    """Returns the catalogue and the SHA-256 of its file."""
    catalogue, raw = load_model(path, Catalogue, "catalogue")
    if not catalogue.elements:
        raise ConfigError(f"catalogue {path}: declares no elements")
    return catalogue, hashlib.sha256(raw).hexdigest()
