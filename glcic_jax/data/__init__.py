"""The readers behind `glcic_jax.input_pipeline`, one module per kind of data.

  images.py       decoding any image file to RGB uint8, and the GLCIC 4 augmentation (numpy/PIL,
                  with its tf.data twin for tfds)
  streams.py      deterministic, resumable streams over a list of examples, decoded in a thread
                  pool; `IndexedReader`, the shared half of the folder and scikit-image readers
  folder.py       data.source='folder': a folder of photos, split by a hash of each file name
  scikit_image.py data.source='skimage': scikit-image's sample photos (no download)
  tf_datasets.py  data.source='tfds': a named TensorFlow Datasets dataset, through tf.data

Each reader has the same three methods (see `input_pipeline.Reader`); `input_pipeline.SOURCES`
maps `config.data.source` to one of them.
"""
