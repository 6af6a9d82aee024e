"""The review web app: `whaleid serve CATALOG_DIR` (FastAPI pages and a JSON API over the catalog library)."""
