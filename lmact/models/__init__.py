"""Model clients: one module per provider, a shared interface, the registry."""
