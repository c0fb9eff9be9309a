"""Recipients (CSV rows) -> compose (template -> message bytes): reading rows, rendering, signing."""
