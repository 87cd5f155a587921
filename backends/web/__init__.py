"""The dashboard: server-rendered pages and their htmx fragments."""
