"""`python -m spikingmamba.energy > docs/ENERGY.md`: the accounting rules as a markdown page."""

from spikingmamba.energy.rules import render_markdown

print(render_markdown(), end="")
