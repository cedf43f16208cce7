"""The optional-dependency rule: a skip on a developer's machine, a failure in CI."""

from __future__ import annotations

import sys

import pytest

from tests import optional


@pytest.mark.parametrize("value", ["true", "1", "TRUE"])
def test_in_ci_a_missing_package_or_binary_fails(monkeypatch, value):
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match="CI=true requires it"):
        optional.require_module("irec_no_such_package_xyz.sub", "an extra")
    with pytest.raises(pytest.fail.Exception, match="CI=true requires it"):
        optional.require_binary("irec-no-such-binary-xyz", "an extra")


@pytest.mark.parametrize("value", [None, "", "false", "0"])
def test_outside_ci_a_missing_package_or_binary_skips(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        optional.require_module("irec_no_such_package_xyz", "an extra")
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        optional.require_binary("irec-no-such-binary-xyz", "an extra")


def test_an_installed_package_that_fails_to_import_is_never_skipped(monkeypatch, tmp_path):
    monkeypatch.delenv("CI", raising=False)
    package = tmp_path / "irec_broken_pkg_xyz"
    package.mkdir()
    (package / "__init__.py").write_text("import irec_dependency_that_is_gone_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "irec_broken_pkg_xyz", raising=False)
    with pytest.raises(ModuleNotFoundError, match="irec_dependency_that_is_gone_xyz"):
        optional.require_module("irec_broken_pkg_xyz", "an extra")


def test_a_present_package_and_binary_are_returned(monkeypatch):
    monkeypatch.setenv("CI", "true")
    assert optional.require_module("json", "stdlib").dumps([]) == "[]"
    assert optional.require_binary("sh", "POSIX").endswith("sh")
