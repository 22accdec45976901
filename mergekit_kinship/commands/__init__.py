"""One module per CLI command.

Each module defines one click command and imports only click and the standard library at module
level: heavy imports (torch, mergekit, lm-eval) happen inside the command body, so that
``mergekit-kinship --help`` answers in about a second.
"""
