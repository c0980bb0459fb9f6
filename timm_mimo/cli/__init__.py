"""Command-line entry points: ``timm-mimo-train`` (:mod:`timm_mimo.cli.train`) and ``timm-mimo-validate``
(:mod:`timm_mimo.cli.validate`); the options both parse live in :mod:`timm_mimo.cli.args`, checkpoint reading in
:mod:`timm_mimo.cli.checkpoint`, run folders, output paths and faults (full disk, SIGINT / SIGTERM) in
:mod:`timm_mimo.cli.run_folder`."""
