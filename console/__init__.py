"""How quell looks and how it is driven: the `quell` CLI and the Textual console."""
