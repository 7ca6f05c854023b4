"""The ``prec`` command line: one module per command (``app`` holds the group and ``list``/``env``; ``bench``,
``summary``) and what they share."""
