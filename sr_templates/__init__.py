"""DICOM outputs of the node: tool results -> SEG (``seg``) and TID 1500 SR (``sr``), with
derived identities (``identity``) and concept codes as data (``codes.json`` via ``codes``).

Entry point for the pipeline: :func:`sr_templates.outputs.build_outputs`.
"""
