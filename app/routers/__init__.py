"""HTTP layer: parse, call a service, return a schema. No rule lives here."""
