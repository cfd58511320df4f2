"""ZenML materializers for samtune's artifact types (folders and JSON, never pickle)."""
