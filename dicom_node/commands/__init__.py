"""One module per ``dicom-node`` subcommand: ``add_arguments(parser)`` and ``run(args, cfg)``."""
