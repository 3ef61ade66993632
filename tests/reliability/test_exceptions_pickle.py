"""Every exception type the package defines survives pickling (process boundaries) intact.

The types are discovered by importing every module of ``effdetmask`` and collecting the exception
classes defined there, so a new one cannot be forgotten.
"""

import importlib
import inspect
import pickle
import pkgutil
from concurrent.futures import ProcessPoolExecutor

import pytest

import effdetmask


def _project_exception_types():
    found = {}
    for info in pkgutil.walk_packages(effdetmask.__path__, effdetmask.__name__ + "."):
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__.startswith("effdetmask"):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return found


EXCEPTION_TYPES = _project_exception_types()


def _sample_value(name, annotation, default):
    """A value for one constructor parameter: distinct per parameter, of a plausible type."""
    if default is not inspect.Parameter.empty and default is not None:
        if isinstance(default, bool):
            return not default
        if isinstance(default, (int, float)):
            return default + 7
        if isinstance(default, str):
            return f"{name} value"
        return default
    text = str(annotation)
    if "int" in text and "str" not in text:
        return 7
    if "float" in text and "str" not in text:
        return 7.5
    return f"{name} value"


def _instance(cls):
    """``cls`` built with a value for every constructor parameter (a message if it takes *args)."""
    sig = inspect.signature(cls.__init__)
    params = [p for p in sig.parameters.values() if p.name != "self"]
    if cls.__init__ is BaseException.__init__ or any(
        p.kind is p.VAR_POSITIONAL for p in params
    ):
        return cls(f"{cls.__name__}: /data/images/0042.jpg: something is wrong")
    args, kwargs = [], {}
    for p in params:
        if p.kind is p.VAR_KEYWORD:
            continue
        value = _sample_value(p.name, p.annotation, p.default)
        if p.kind is p.KEYWORD_ONLY:
            kwargs[p.name] = value
        else:
            args.append(value)
    return cls(*args, **kwargs)


def _same(a, b):
    assert type(a) is type(b)
    assert str(a) == str(b)
    assert a.args == b.args
    assert vars(a) == vars(b)


def test_discovery_finds_the_known_types():
    names = {n.rsplit(".", 1)[-1] for n in EXCEPTION_TYPES}
    assert {"DatasetIssue", "CacheError", "SampleError", "ConfigError", "MaskFormatError",
            "NonFiniteLossError", "HubUnavailableError"} <= names, sorted(names)


@pytest.mark.parametrize("name", sorted(EXCEPTION_TYPES))
def test_exception_round_trips_through_pickle(name):
    exc = _instance(EXCEPTION_TYPES[name])
    exc.add_note("a note added on the way")
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        _same(exc, pickle.loads(pickle.dumps(exc, protocol)))


def _raise_in_worker(name):
    raise _instance(EXCEPTION_TYPES[name])


def test_exceptions_raised_in_a_worker_process_arrive_intact():
    with ProcessPoolExecutor(1) as pool:
        futures = {name: pool.submit(_raise_in_worker, name) for name in EXCEPTION_TYPES}
        for name, future in futures.items():
            remote = future.exception(timeout=60)
            _same(remote, _instance(EXCEPTION_TYPES[name]))
