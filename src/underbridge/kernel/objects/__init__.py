"""Kernel objects, one module per type (seL4's src/object/ layout)."""
