"""File formats the engine owns: each format's names, header and reading/writing rules live in one module here."""
