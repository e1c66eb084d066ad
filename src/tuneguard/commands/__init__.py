"""CLI sub-commands, one module each, registered in ``tuneguard.cli.COMMANDS``."""
