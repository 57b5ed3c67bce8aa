"""Where runs are recorded: MLflow's store, the logger the training loop writes through, the writer
process that stores its points, and the reader that gives every run back as one tidy table.

Nothing here imports torch, the sweep or the results; see docs/design.md for the process model.
"""
