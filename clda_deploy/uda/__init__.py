"""Unsupervised domain adaptation building blocks.

``ema`` (name-keyed EMA teacher and CLDA's S->T block update), ``mixing`` (ClassMix, colour jitter,
Gaussian blur), ``pseudo_label`` (DAFormer's confidence-weighted hard pseudo-labels); the teacher
and student tasks and the analyses build on them. Import the submodules directly: this package
imports nothing itself, so importing it stays light.
"""
