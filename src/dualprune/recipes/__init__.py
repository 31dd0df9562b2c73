"""Built-in recipes (YAML files), run with ``dualprune run NAME``."""
