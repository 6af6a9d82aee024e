"""Photo catalogs: reading and checking them, splitting them, synthetic ones for tests and the demo."""
