"""modelport.protocol: what every part of modelport shares, so that none imports another.

The `.proto` sources and the code generated from them (`generated/`, by `generate.py`), the one
codec between protobuf and numpy (`codec`), the datatype maps (`datatypes`), the metadata and
request types (`types`), reading classes from a classifier's output (`classes`), the quality
metric maths (`scoring`), the model repository's file names (`repository`) and reading inputs
from .npz files (`arrays`). The client, the server and the converter import from here; nothing
here imports from them.
"""
