"""Models from labelled stores: training, evaluation and comparison of the model zoo.

``data`` reads the labelled sources, ``splits`` holds out validation sets,
``augment`` perturbs training stamps, ``transfer`` and ``distill`` bring in other
weights, ``fit`` trains (``skysieve train``); ``metrics``, ``evaluate`` and
``plots`` measure a model (``skysieve evaluate``); ``compare`` runs a study
(``skysieve compare``) with ``statistics``, ``machine`` and ``tables``.
"""
