"""The living catalog: photos, encounters, individuals and reviewed decisions in a database (SQLite or PostgreSQL)."""
