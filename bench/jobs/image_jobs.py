"""The job of bench/images.py's team image: a small computation with numpy.

Copied as the image's only code module (``build_image(code=..., requirements=...)``).
numpy is imported inside the function, so the bench, which declares the job with
``@job``, needs the module but not numpy.
"""


def numpy_sum(count):
    """The sum of ``0 .. count-1`` computed by numpy, as a plain int."""
    import numpy

    return int(numpy.arange(count, dtype=numpy.int64).sum())
