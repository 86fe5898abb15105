"""omni's OpenAI-compatible HTTP server (`omni serve`). Import `omni.server.app` for `create_app`;
this package stays light so that the CLI can build its parser without importing FastAPI."""
