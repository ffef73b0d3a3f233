"""Admin: results from the CLI, a token-protected HTTP API and a web view."""
