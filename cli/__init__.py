"""The ``frgnet-wsi`` command line (installed as the package ``wsi_frgnet.cli``)."""
