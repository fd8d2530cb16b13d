"""Sub-commands of the ``ultrasound-diffusers`` console script.

Every module in this package that defines ``register(subparsers)`` adds one
sub-command: it calls ``subparsers.add_parser(name, help=...)``, adds its
arguments and sets ``parser.set_defaults(func=callable)``, where ``callable``
takes the parsed ``argparse.Namespace`` and returns an exit code (or None).
Modules are discovered by :func:`ultrasound_diffusers.cli.build_parser`, so a
new command is a new file here and nothing else.
"""
