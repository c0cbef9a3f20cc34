"""Research tools around the runtime: training, datasets, phantoms, the nodule check, evaluation and
its report, and their `python -m synth` commands. The runtime (`synth/` outside this package, and
the node) never imports from here; tests/unit/test_layering.py enforces it. These modules need the
`research` extra (SciPy, Matplotlib): `pip install -e '.[research]'`.
"""
