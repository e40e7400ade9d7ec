"""Energy accounting of SpikingMamba: op counts from shapes and measured spikes, priced with a
per-op energy table (45 nm fp32 by default), reported per layer and in total, teacher vs student."""

from spikingmamba.energy.analytic import (NAMED_SHAPES, PAPER_RATIO, analytic_report, measured_site_profile, named_shape,
                                          site_profile_report, solve_mean_spike)
from spikingmamba.energy.counting import LayerSpikes, MambaShape, Ops, SiteSpikes, block_ops, head_ops
from spikingmamba.energy.measure import measure_report, spikes_from_stats
from spikingmamba.energy.report import EnergyReport, build_report, format_report, write_outputs
from spikingmamba.energy.tables import DEFAULT_TABLE, TABLES, EnergyTable, load_table

__all__ = ["NAMED_SHAPES", "PAPER_RATIO", "analytic_report", "measured_site_profile", "named_shape",
           "site_profile_report", "solve_mean_spike", "LayerSpikes",
           "MambaShape", "Ops", "SiteSpikes", "block_ops", "head_ops", "spikes_from_stats", "measure_report",
           "EnergyReport", "build_report", "format_report", "write_outputs", "DEFAULT_TABLE", "TABLES",
           "EnergyTable", "load_table"]
