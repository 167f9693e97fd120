"""Built-in analyses of the study pipeline (registered in :mod:`gradnoise.study.registry`)."""
