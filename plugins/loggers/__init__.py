"""plugins/loggers: the built-in experiment trackers (tensorboard, mlflow). Each imports its library
only when a logger is built, so the package loads without them (`pip install 'pretextflow[trackers]'`)."""
