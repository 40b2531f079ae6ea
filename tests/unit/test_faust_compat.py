"""Every private library name the framework relies on exists in the installed versions, and a
missing one is reported by name and version."""

from __future__ import annotations

import pytest

from streams.faust_compat import private
from streams.faust_compat.private import IncompatibleLibrary, PrivateName


def test_every_class_level_name_exists() -> None:
    private.check_classes()


def test_a_missing_class_level_name_names_the_attribute_and_the_versions() -> None:
    gone = (PrivateName("faust.tables.recovery:Recovery", "_renamed_upstream", "example"),)
    with pytest.raises(IncompatibleLibrary) as info:
        private.check_classes(gone)
    text = str(info.value)
    assert "faust.tables.recovery.Recovery._renamed_upstream" in text
    assert "faust-streaming 0.15.3" in text  # checked against
    assert "is installed" in text


def test_instance_names_are_checked_on_instances_of_their_class() -> None:
    class Consumer:  # not the listed class: nothing to check
        pass

    private.check_instance(Consumer())
    from faust.stores.rocksdb import Store

    store = Store.__new__(Store)  # no database opened; __init__ never ran, so _dbs is missing
    with pytest.raises(IncompatibleLibrary, match=r"Store\._dbs"):
        private.check_instance(store)


def test_require_reads_or_names_what_is_missing() -> None:
    class Thing:
        _there = 1

    assert private.require(Thing(), "_there") == 1
    with pytest.raises(IncompatibleLibrary, match=r"Thing\._gone"):
        private.require(Thing(), "_gone")


def test_listed_names_are_unique() -> None:
    keys = [(n.owner, n.name) for n in private.NAMES]
    assert len(keys) == len(set(keys))
