"""docs/ as a package: `python -m docs.reference` generates and checks docs/reference.md."""
