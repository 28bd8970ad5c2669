"""The rendered-shapes data set lives in the package (beyondbp.synthetic); tests import it here."""

from beyondbp.synthetic import NUM_CLASSES, shapes, write_shapes  # noqa: F401
