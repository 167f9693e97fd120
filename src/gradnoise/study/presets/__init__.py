"""Paper presets for ``gradnoise reproduce`` (see :mod:`gradnoise.study.registry`)."""
