"""Sub-commands of the ``dense-perception`` command line, one module each."""
