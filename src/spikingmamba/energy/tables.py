"""Energy per operation: the tables an energy report is priced with.

Source of every built-in number: M. Horowitz, "Computing's energy problem (and what we can do
about it)", ISSCC 2014, the table of arithmetic energies at 45 nm, 0.9 V:

    integer add    8 bit 0.03 pJ    32 bit 0.1 pJ
    integer mult   8 bit 0.2 pJ     32 bit 3.1 pJ
    float add     16 bit 0.4 pJ     32 bit 0.9 pJ
    float mult    16 bit 1.1 pJ     32 bit 3.7 pJ

A MAC is one multiply plus one add; an AC (spike-driven accumulate) is one add:

    45nm-fp32   E_MAC = 3.7 + 0.9 = 4.6 pJ    E_AC = 0.9 pJ    (the spiking-network convention)
    45nm-fp16   E_MAC = 1.1 + 0.4 = 1.5 pJ    E_AC = 0.4 pJ
    45nm-int8   E_MAC = 0.2 + 0.1 = 0.3 pJ    E_AC = 0.1 pJ    (8-bit weights and activations,
                32-bit integer accumulator, as int8 inference runs; with an 8-bit accumulator
                it would be 0.23 / 0.03 pJ: write that as a custom table if you want it)

A custom table is a YAML file:

    name: my-chip            # optional, default: the file name
    e_mac: 4.6               # pJ per multiply-accumulate (dense op)
    e_ac: 0.9                # pJ per accumulate (spike-driven)
    source: where the numbers come from   # optional
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from spikingmamba.errors import UserError
from spikingmamba.utils.io import read_yaml

HOROWITZ = "Horowitz, 'Computing's energy problem', ISSCC 2014 (45 nm, 0.9 V)"


@dataclass(frozen=True)
class EnergyTable:
    """pJ per dense multiply-accumulate and per spike accumulate."""

    name: str
    e_mac: float
    e_ac: float
    source: str = ""

    def __post_init__(self):
        for field in ("e_mac", "e_ac"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise UserError(f"energy table {self.name!r}: {field} must be a positive number of pJ, got {value!r}")
            object.__setattr__(self, field, float(value))

    def describe(self) -> str:
        src = f"; {self.source}" if self.source else ""
        return f"{self.name} (E_MAC {self.e_mac:g} pJ, E_AC {self.e_ac:g} pJ{src})"


TABLES = {
    "45nm-fp32": EnergyTable("45nm-fp32", 4.6, 0.9, f"fp32 mult 3.7 + add 0.9; {HOROWITZ}"),
    "45nm-fp16": EnergyTable("45nm-fp16", 1.5, 0.4, f"fp16 mult 1.1 + add 0.4; {HOROWITZ}"),
    "45nm-int8": EnergyTable("45nm-int8", 0.3, 0.1, f"int8 mult 0.2 + int32 add 0.1; {HOROWITZ}"),
}
DEFAULT_TABLE = "45nm-fp32"
_YAML_KEYS = ("name", "e_mac", "e_ac", "source")


def load_table(spec: str | Path = DEFAULT_TABLE) -> EnergyTable:
    """A built-in table by name, or a custom YAML file (see the module docstring)."""
    spec = str(spec)
    if spec in TABLES:
        return TABLES[spec]
    path = Path(spec)
    if path.suffix.lower() not in (".yaml", ".yml"):
        raise UserError(f"unknown energy table {spec!r}; choose one of {', '.join(TABLES)} "
                        f"or pass a .yaml file with e_mac and e_ac in pJ")
    data = read_yaml(path, what="energy table file")
    unknown = sorted(set(data) - set(_YAML_KEYS))
    if unknown:
        raise UserError(f"energy table file {path}: unknown key(s) {unknown}; known: {list(_YAML_KEYS)}")
    missing = [k for k in ("e_mac", "e_ac") if k not in data]
    if missing:
        raise UserError(f"energy table file {path}: missing key(s) {missing} (pJ per op)")
    return EnergyTable(name=str(data.get("name") or path.stem), e_mac=data["e_mac"], e_ac=data["e_ac"],
                       source=str(data.get("source") or path))
