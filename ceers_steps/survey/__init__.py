"""Many visits and filters: finding them among cal files, aligning each, summarising."""
