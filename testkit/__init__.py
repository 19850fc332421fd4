"""Synthetic inputs shared by the tests (``tests/``) and the benchmarks (``bench/``): CT phantoms
with known truth (``phantoms.py``), tiny random-weight model checkpoints (``tiny_models.py``) and
model folders in the layouts the tools load (``model_files.py``). Not part of the installed
package; neither tests nor benchmarks import each other, both import this."""
