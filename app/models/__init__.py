"""SQLModel tables (``tables``) and request/response schemas (``schemas``)."""
