"""Infrastructure every layer uses: jwst-version differences, logging, atomic file writes, WCS geometry."""
