"""Exposures in, cutout store out: FITS reading, detection, cutouts, whole exposures, image folders."""
