"""spatialsep-jax: speech separation with the spatial cues of head-worn microphones."""

import importlib.util as _importlib_util
import os as _os

# pyproject.toml installs the top-level folders configs/, launch/ and pretrained/ as
# spatialsep_jax.configs / .launch / .pretrained. In a checkout that is not pip-installed
# (a GPU host that cannot install, say) the same names resolve to those folders.
_CHECKOUT = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if (_importlib_util.find_spec(__name__ + ".configs") is None
    and _os.path.isfile(_os.path.join(_CHECKOUT, "configs", "__init__.py"))):
  __path__.append(_CHECKOUT)
