"""One module per `quell` subcommand group; each exposes ``register(subparsers)``.

Modules here import only argparse at load time. What a command needs is
imported inside its handler, so `quell --help` stays fast and `quell collect`
never loads Textual.
"""
