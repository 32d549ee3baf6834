"""
One alignment run as named stages, each a plain function on small dataclasses.

`ceers_steps.stages.run.run_stages` calls them in order: ``plan`` (inputs ->
images, catalogs to read or detect; then units with their reference catalog at
their epoch) -> ``detect`` -> ``fit`` (per unit relative, absolute, judge;
statuses) -> ``write`` (images, WCS models) -> ``report`` -> results tables.
"""
