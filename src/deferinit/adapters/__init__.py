"""Per-framework adapters. Each module imports its framework; none is imported by ``import deferinit``."""
