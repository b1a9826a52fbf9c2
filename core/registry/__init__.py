"""The plugin system: hook specifications, the contracts plugins implement, the registry that
loads built-ins and entry points, the cached listing, and the pre-flight compatibility checks."""
