"""Rich display for code contexts: objects to MIME bundles, by the Jupyter convention.

An object shows as ``text/plain`` (its repr) plus whatever its ``_repr_*_`` methods or
``_repr_mimebundle_`` return. Matplotlib figures render to PNG through a backend that lives in
memory (``module://_sandlot_inline``), installed when matplotlib is first imported, so a worker
that never plots never imports matplotlib. Standard library only.
"""

import sys

# method name -> MIME type, in the order Jupyter tries them
REPR_METHODS = (
    ("_repr_html_", "text/html"),
    ("_repr_markdown_", "text/markdown"),
    ("_repr_svg_", "image/svg+xml"),
    ("_repr_png_", "image/png"),
    ("_repr_jpeg_", "image/jpeg"),
    ("_repr_latex_", "text/latex"),
    ("_repr_json_", "application/json"),
    ("_repr_javascript_", "application/javascript"),
    ("_repr_pdf_", "application/pdf"),
)
BINARY = frozenset(["image/png", "image/jpeg", "application/pdf"])
INLINE_BACKEND = "_sandlot_inline"


def _encode(mime, value):
    """A bundle value as JSON can carry it: binary formats as base64 text."""
    if mime in BINARY:
        if isinstance(value, str):
            return value  # already base64, as IPython allows
        import base64

        return base64.b64encode(bytes(value)).decode("ascii")
    if mime == "application/json":
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else str(value)


def _plain_text(obj):
    if type(obj) in (dict, list, tuple, set, frozenset):
        import pprint

        return pprint.pformat(obj, width=79, sort_dicts=False)
    return repr(obj)


def bundle(obj, warn):
    """The MIME bundle for ``obj``. A repr method that raises is skipped and reported through
    ``warn(text)``, as Jupyter prints a formatter's traceback instead of failing the cell."""
    data = {}
    # Classes have the methods too, unbound: Jupyter shows a class by its repr only.
    if not isinstance(obj, type):
        mimebundle = _method(obj, "_repr_mimebundle_")
        if mimebundle is not None:
            try:
                value = mimebundle(include=None, exclude=None)
                if isinstance(value, tuple):
                    value = value[0]
                if isinstance(value, dict):
                    for mime, item in value.items():
                        if item is not None:
                            data[str(mime)] = _encode(mime, item)
            except Exception as exc:
                warn("_repr_mimebundle_", exc)
        for name, mime in REPR_METHODS:
            if mime in data:
                continue
            method = _method(obj, name)
            if method is None:
                continue
            try:
                value = method()
            except Exception as exc:
                warn(name, exc)
                continue
            if isinstance(value, tuple):  # (data, metadata)
                value = value[0]
            if value is not None:
                data[mime] = _encode(mime, value)
        if "image/png" not in data and _is_figure(obj):
            png = figure_png(obj)
            if png is not None:
                data["image/png"] = png
    if "text/plain" not in data:
        try:
            data["text/plain"] = _plain_text(obj)
        except Exception as exc:
            warn("__repr__", exc)
            data["text/plain"] = "<%s object>" % type(obj).__name__
    return data


def _method(obj, name):
    try:
        method = getattr(obj, name, None)
    except Exception:  # a __getattr__ that raises something other than AttributeError
        return None
    return method if callable(method) else None


# -- matplotlib -------------------------------------------------------------------------------


def _is_figure(obj):
    cls = type(obj)
    return cls.__name__ == "Figure" and cls.__module__ == "matplotlib.figure"


def figure_png(figure):
    import base64
    import io

    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", bbox_inches="tight")
    except Exception:
        return None
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def open_figures():
    """Figures pyplot holds open (drawn but not yet shown), oldest first."""
    if "matplotlib.pyplot" not in sys.modules:
        return []
    from matplotlib._pylab_helpers import Gcf

    return [manager.canvas.figure for manager in Gcf.get_all_fig_managers()]


def close_figures():
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close("all")


def install_matplotlib_backend(show):
    """Make ``module://_sandlot_inline`` importable and select it when matplotlib loads.

    ``show()`` displays every open figure. An explicit ``MPLBACKEND`` is respected.
    """
    import types

    backend = types.ModuleType(INLINE_BACKEND)

    def __getattr__(name):  # the Agg classes, imported only once matplotlib asks for them
        if name in ("FigureCanvas", "FigureManager"):
            from matplotlib.backend_bases import FigureManagerBase
            from matplotlib.backends.backend_agg import FigureCanvasAgg

            backend.FigureCanvas = FigureCanvasAgg
            backend.FigureManager = FigureManagerBase
            return getattr(backend, name)
        raise AttributeError(name)

    backend.__getattr__ = __getattr__
    backend.show = show
    sys.modules[INLINE_BACKEND] = backend
    if "MPLBACKEND" not in __import__("os").environ:
        sys.meta_path.insert(0, _AfterImport("matplotlib", _select_inline))


def _select_inline(matplotlib):
    try:
        matplotlib.use("module://" + INLINE_BACKEND)
    except Exception:
        pass


class _AfterImport:
    """A one-shot meta path hook: runs ``callback(module)`` right after ``name`` is imported."""

    def __init__(self, name, callback):
        self.name = name
        self.callback = callback

    def find_spec(self, name, path=None, target=None):
        if name != self.name:
            return None
        sys.meta_path.remove(self)
        import importlib.util

        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader_exec = spec.loader.exec_module
        callback = self.callback

        def exec_module(module):
            loader_exec(module)
            callback(module)

        spec.loader.exec_module = exec_module
        return spec
