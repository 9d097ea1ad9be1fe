"""Pixels of one stamp: cutting, preprocessing for the model, blur and per-stamp statistics."""
