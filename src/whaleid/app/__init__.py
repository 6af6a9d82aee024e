"""What people run: the command line and the static catalog explorer (and, later, the web app)."""
