"""regrow inside other training stacks, on the step contract of
:class:`regrow.SparseMethod` (the method runs from the optimizer's step hooks).

* :mod:`regrow.integrations.lightning`: ``RegrowCallback`` for Lightning
  (``pip install regrow[lightning]``);
* :mod:`regrow.integrations.transformers`: ``RegrowCallback`` + ``RegrowTrainerMixin``
  for the Hugging Face ``Trainer`` (``pip install regrow[transformers]``).

Importing this package imports neither framework; each submodule imports its own
and says which extra to install when it is missing.
"""
