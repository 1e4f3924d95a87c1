"""Inference shared by `convit.evaluate`, `convit.predict` and `convit.export`: weights, preprocessing, names."""
