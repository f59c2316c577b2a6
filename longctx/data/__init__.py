"""Data loaders and builders. `longctx.data.concat(examples, k=3, ...)` builds SQ3/XQ3 long contexts.

Note: the attribute `longctx.data.concat` is the function; import the module's other names with
`from longctx.data.concat import concat_file`."""
from longctx.data.concat import concat

__all__ = ["concat"]
