"""Training runs: fitting a method into a run folder, the losses, model choice on dev, experiments over many rows,
advice to the user."""
