"""The learning task (data, model, device noise, training) that the ClientApp trains and the
ServerApp evaluates; :mod:`qfl.task.build` makes both from a run configuration."""
