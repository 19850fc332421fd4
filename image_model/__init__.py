"""The bottom layer: the shared image model every other package may import, importing none of them.

* :mod:`~image_model.volume`, :mod:`~image_model.geometry`, :mod:`~image_model.loader`: a series on
  disk as one :class:`~image_model.volume.Volume` (the one DICOM loader);
* :mod:`~image_model.findings`: the value types tools return (codes, segments, measurements,
  boxes, tool output);
* :mod:`~image_model.codes`: the one code table (``codes.json``);
* :mod:`~image_model.fingerprint`: which instance set a job or output covers.
"""
