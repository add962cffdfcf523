"""Business rules. No FastAPI imports here: routers call these with a session."""
