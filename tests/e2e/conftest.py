"""Fixtures of the end-to-end tests."""

import pytest

from tests.fixtures.terminology import write_terminology


@pytest.fixture(scope="session")
def terms(tmp_path_factory):
    """A terminology of the SPACCC training cases' gold strings: (its folder, ``{normalised
    form: (code, concept_id)}``)."""
    folder = tmp_path_factory.mktemp("terminology")
    return folder, write_terminology(folder)
