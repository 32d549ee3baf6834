"""Infrastructure every layer uses: jwst-version differences, logging, atomic writes, WCS geometry, tasks."""
