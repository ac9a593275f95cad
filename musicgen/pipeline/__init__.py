"""One function per DVC stage, grouped by stage family: read inputs, call the library, write outputs.

Stage scripts in ``stages/`` only parse paths and params and call one of these, so the whole pipeline
is importable and testable without DVC. Each module imports only what its stages use, so a stage's
``deps`` in ``dvc.yaml`` name exactly the code it runs:

* :mod:`~musicgen.pipeline.sources`: download;
* :mod:`~musicgen.pipeline.prepare`: resample, split;
* :mod:`~musicgen.pipeline.codes`: codec_model, tokenize;
* :mod:`~musicgen.pipeline.captions`: text_model, encode_text;
* :mod:`~musicgen.pipeline.training`: train;
* :mod:`~musicgen.pipeline.generation`: generate;
* :mod:`~musicgen.pipeline.evaluation`: evaluate.
"""
