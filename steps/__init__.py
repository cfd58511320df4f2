"""ZenML steps: thin wrappers that unpack config, call samtune, and return Annotated outputs."""
