"""The raw-text pyfunc as a model from code: MLflow runs this file when the model loads.

``serve.save_model``/``serve.pyfunc_spec`` give this file's path as ``python_model``, so a
logged model holds source, not a pickle: loading it never unpickles anything, and whoever can
write to the artifact store cannot hide code in a ``python_model.pkl``. Never imported by the
library itself (it declares the model on import).
"""

from pipeline.serve import SentimentModel, set_model

set_model(SentimentModel())
