"""hybrid_vlm (package init is completed once the processor lands)."""
