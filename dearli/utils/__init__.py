"""Small helpers shared by every layer of dearli (they import nothing from the rest of the package)."""
