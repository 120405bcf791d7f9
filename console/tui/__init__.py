"""The Textual console: `quell console`.

Only ``console.commands.console`` imports this package, from inside its
handler, so no other command pays for loading Textual. The modules that do
not draw (``snapshot``, ``clock``, ``chart``, ``units``, ``settings``,
``keys``) import no Textual either and are tested on plain values.
"""
