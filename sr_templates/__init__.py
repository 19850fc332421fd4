"""DICOM outputs of the node, shaped like highdicom: one subpackage per object kind, each with
its parts (``content``) and the object (``sop``).

* ``seg/``: masks -> DICOM Segmentation;
* ``sr/``: results -> TID 1500 Measurement Report (``content`` -> ``templates`` -> ``sop``);
* ``sc/``: secondary-capture overlays for destinations that refuse a SEG;
* ``identity``: derived UIDs; ``source``: the source headers highdicom copies;
  ``equipment``, ``charset``, ``coded``: what every object shares.

Entry point for the pipeline: :func:`sr_templates.outputs.build_outputs`.
"""
