"""Built-in plugins. Each module registers through the same pluggy hooks a third party uses
(see ``pretextflow.core.registry.hookspecs``); the list of modules is ``core.registry.registry.BUILTIN_PLUGINS``."""
