# Before any state module is imported: the compiled or the source copy (flows/compiled.py).
from flows import compiled

compiled.install()
