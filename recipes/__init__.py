"""Method recipes (one TOML file per method, a table per budget), installed as ``toolchain.recipes``."""
