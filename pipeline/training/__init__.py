"""Models from labelled stores: data, splits, augmentation, transfer, the fit loop, evaluation and comparison."""
