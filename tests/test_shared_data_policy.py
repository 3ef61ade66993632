"""Tests that need ../shared/data skip without it on a developer machine, and fail under CI=true
(tests/conftest.py), so a CI machine without the data cannot pass by skipping them."""

import pytest


def test_missing_shared_data_skips_locally_and_fails_under_ci(shared_data, monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        shared_data("no_such_folder")
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception, match="no_such_folder"):
        shared_data("no_such_folder")
